"""pyproject.toml (ranges), constraints.txt (exact pins), environment.yml and the Makefile describe one environment."""
import re
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
ENV = yaml.safe_load((ROOT / "environment.yml").read_text())


def _pins(lines):
    """name -> version for every `name==version` line (constraints.txt)."""
    pins = {}
    for line in lines:
        req = Requirement(line)
        (spec,) = req.specifier  # exactly one specifier ...
        assert spec.operator == "==", f"{line!r} is not an exact pin"  # ... and it is ==
        pins[canonicalize_name(req.name)] = spec.version
    return pins


def _constraints():
    lines = [ln.strip() for ln in (ROOT / "constraints.txt").read_text().splitlines()]
    return _pins([ln for ln in lines if ln and not ln.startswith("#")])


def _all_requirements():
    reqs = list(PROJECT["dependencies"])
    for extra in PROJECT["optional-dependencies"].values():
        reqs += extra
    return [Requirement(r) for r in reqs]


def _env_pip_lines():
    (pip,) = [d["pip"] for d in ENV["dependencies"] if isinstance(d, dict)]
    return pip


def test_the_library_needs_only_torch_transformers_and_safetensors_as_ranges():
    library = {canonicalize_name(Requirement(r).name): Requirement(r) for r in PROJECT["dependencies"]}
    assert set(library) == {"torch", "transformers", "safetensors"}
    for req in _all_requirements():                   # ranges: an existing environment keeps its versions
        assert req.specifier and all(s.operator != "==" for s in req.specifier), f"{req} is an exact pin"
    book = {canonicalize_name(Requirement(r).name): Requirement(r) for r in PROJECT["optional-dependencies"]["book"]}
    assert "2.0" not in book["jupyter-book"].specifier   # 2.x cannot build HTML offline


def test_environment_yml_installs_the_package_with_every_extra():
    extras = set(PROJECT["optional-dependencies"])
    installs = [line for line in _env_pip_lines() if line.startswith("-e ")]
    assert len(installs) == 1, _env_pip_lines()
    m = re.fullmatch(r"-e \.\[([\w,-]+)\]", installs[0])
    assert m, installs[0]
    assert set(m.group(1).split(",")) == extras
    assert "-c constraints.txt" in _env_pip_lines()
    # Nothing else is installed behind pyproject.toml's back.
    assert set(_env_pip_lines()) == {"-c constraints.txt", installs[0]}
    conda = [d for d in ENV["dependencies"] if isinstance(d, str)]
    assert set(conda) == {"pip", next(d for d in conda if d.startswith("python="))}


def test_python_versions_agree():
    (python,) = [d for d in ENV["dependencies"] if isinstance(d, str) and d.startswith("python=")]
    env_version = python.split("=", 1)[1]
    assert Version(env_version) in SpecifierSet(PROJECT["requires-python"])
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(rf"^PYTHON \?= python{re.escape(env_version)}$", makefile, re.M), "Makefile python differs"


def test_constraints_pin_every_requirement_inside_its_range():
    constraints = _constraints()
    for req in _all_requirements():
        name = canonicalize_name(req.name)
        assert name in constraints, f"{name} is not pinned in constraints.txt"
        assert req.specifier.contains(constraints[name], prereleases=True), \
            f"{name}: constraints.txt pins {constraints[name]}, outside pyproject's {req.specifier}"


def test_makefile_installs_the_same_extras_with_the_constraints():
    makefile = (ROOT / "Makefile").read_text()
    extras = ",".join(PROJECT["optional-dependencies"])
    assert re.search(rf'pip install (--[\w-]+ )*-c constraints\.txt -e "\.\[{extras}\]"', makefile), makefile


def test_running_environment_matches_the_pins():
    wrong = {}
    constraints = _constraints()
    for req in _all_requirements():
        name = canonicalize_name(req.name)
        pin = constraints[name]
        try:
            installed = version(name)
        except PackageNotFoundError:
            wrong[name] = (pin, None)
            continue
        if Version(installed).public != Version(pin).public:  # torch 2.13.0+cpu is torch 2.13.0
            wrong[name] = (pin, installed)
    assert not wrong, f"installed versions differ from constraints.txt (pin, installed): {wrong}; run `make test`"
