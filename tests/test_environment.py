"""pyproject.toml, environment.yml, constraints.txt and the Makefile describe one environment."""
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
    """name -> version for every `name==version` requirement."""
    pins = {}
    for line in lines:
        req = Requirement(line)
        (spec,) = req.specifier  # exactly one specifier ...
        assert spec.operator == "==", f"{line!r} is not an exact pin"  # ... and it is ==
        pins[canonicalize_name(req.name)] = spec.version
    return pins


def _all_requirements():
    reqs = list(PROJECT["dependencies"])
    for extra in PROJECT["optional-dependencies"].values():
        reqs += extra
    return reqs


def _env_pip_lines():
    (pip,) = [d["pip"] for d in ENV["dependencies"] if isinstance(d, dict)]
    return pip


def test_every_dependency_is_an_exact_pin():
    pins = _pins(_all_requirements())
    assert pins["jupyter-book"] == "1.0.4.post1"  # 2.x cannot build HTML offline
    assert {"torch", "transformers", "peft", "pytest"} <= set(pins)


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


def test_constraints_agree_with_pyproject_pins():
    lines = [ln.strip() for ln in (ROOT / "constraints.txt").read_text().splitlines()]
    constraints = _pins([ln for ln in lines if ln and not ln.startswith("#")])
    for name, pin in _pins(_all_requirements()).items():
        assert constraints.get(name) == pin, f"{name}: pyproject {pin}, constraints.txt {constraints.get(name)}"


def test_makefile_installs_the_same_extras_with_the_constraints():
    makefile = (ROOT / "Makefile").read_text()
    extras = ",".join(PROJECT["optional-dependencies"])
    assert re.search(rf'pip install (--[\w-]+ )*-c constraints\.txt -e "\.\[{extras}\]"', makefile), makefile


def test_running_environment_matches_the_pins():
    wrong = {}
    for name, pin in _pins(_all_requirements()).items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            wrong[name] = (pin, None)
            continue
        if Version(installed).public != Version(pin).public:  # torch 2.13.0+cpu is torch 2.13.0
            wrong[name] = (pin, installed)
    assert not wrong, f"installed versions differ from pyproject.toml (pin, installed): {wrong}; run `make test`"
