"""Tasks: registry, builders (on small synthetic assets in the real layout, and on the real assets when
they are in the cache), split hygiene, caching, hub failure offline, lead baseline."""

from __future__ import annotations

import bz2
import csv
import dataclasses
import io
import json
import os
import time
from pathlib import Path

import datasets
import pytest

from petl import tasks

# ---- registry ----


def test_registry_names_and_kinds():
    assert set(tasks.TASKS) == {"rt-polarity", "vitaminc", "bbc-xsum", "en-ro-l10n", "sst2", "mnli", "xsum",
                                "wmt16-en-ro"}
    for name, spec in tasks.TASKS.items():
        assert spec.name == name
        assert spec.primary_metric in spec.metrics
        assert {"train", "validation", "test"} <= set(spec.splits)
        if spec.is_embedded:
            assert spec.stands_in_for in tasks.TASKS and spec.stand_in is None
        else:
            assert spec.hub
            if spec.stand_in is not None:
                stand_in = tasks.TASKS[spec.stand_in]
                assert stand_in.is_embedded and stand_in.kind == spec.kind
                assert stand_in.num_labels == spec.num_labels
    assert tasks.TASKS["wmt16-en-ro"].stand_in == "en-ro-l10n"


def test_unknown_task_lists_valid_names():
    with pytest.raises(ValueError) as e:
        tasks.get_task("sst-2")
    assert "'sst-2'" in str(e.value)
    for name in tasks.TASKS:
        assert name in str(e.value)
    with pytest.raises(ValueError, match="unknown task"):
        tasks.load_task("glue")


def test_paper_generation_and_training_defaults():
    xsum, enro = tasks.TASKS["xsum"], tasks.TASKS["wmt16-en-ro"]
    assert xsum.generate_kwargs("encoder-decoder") == {
        "num_beams": 6, "min_length": 10, "max_length": 60, "no_repeat_ngram_size": 3, "early_stopping": True}
    assert (xsum.max_source_length, xsum.max_target_length) == (512, 128)
    assert enro.generate_kwargs("encoder-decoder")["num_beams"] == 5
    assert enro.generate_kwargs("encoder-decoder")["max_length"] == 200
    assert enro.romanian_postprocess
    # a decoder reads the prompt too: the same numbers count new tokens
    dec = tasks.TASKS["bbc-xsum"].generate_kwargs("decoder")
    assert dec["max_new_tokens"] == 48 and dec["min_new_tokens"] == 10 and "max_length" not in dec
    with pytest.raises(ValueError, match="family"):
        xsum.generate_kwargs("encoder")
    with pytest.raises(ValueError, match="generation tasks"):
        tasks.TASKS["sst2"].generate_kwargs("decoder")
    # Table 8
    glue, xs, ro = tasks.TASKS["sst2"].train, xsum.train, enro.train
    assert (glue.lr, glue.batch_size, glue.label_smoothing, glue.max_grad_norm, glue.weight_decay,
            glue.warmup_ratio, glue.paper_epochs) == (1e-4, 32, 0.0, 1.0, 0.1, 0.06, 10)
    assert (xs.lr, xs.label_smoothing, xs.max_grad_norm, xs.weight_decay, xs.warmup_ratio,
            xs.paper_steps) == (5e-5, 0.1, 0.1, 0.01, 0.0, 100_000)
    assert (ro.lr, ro.label_smoothing, ro.max_grad_norm, ro.adam_betas, ro.paper_steps) == (
        5e-5, 0.1, 1.0, (0.9, 0.98), 50_000)
    assert tasks.TASKS["mnli"].splits["test"] == 9815  # the full matched dev set


def test_taskspec_validates():
    with pytest.raises(ValueError, match="kind"):
        dataclasses.replace(tasks.TASKS["sst2"], kind="regression")
    with pytest.raises(ValueError, match="primary_metric"):
        dataclasses.replace(tasks.TASKS["sst2"], primary_metric="f1")


# ---- synthetic assets in the real layout ----


def _write_rt(folder, rows):
    folder.mkdir(parents=True)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["category", "text", "movie_name", "has_plot_and_reviews"])
    w.writerows(rows)
    (folder / "rotten_tomatoes_corpus_full.csv.bz2").write_bytes(bz2.compress(buf.getvalue().encode()))


def _write_bigbench(folder, vitaminc, xsum_pairs):
    (folder / "vitaminc_fact_verification").mkdir(parents=True)
    (folder / "gem/xsum").mkdir(parents=True)
    examples = [{"input": f"{page}: {ev}\nClaim: {claim}",
                 "target_scores": {k: int(k == lab) for k in ("True", "False", "Neither")}}
                for page, ev, claim, lab in vitaminc]
    (folder / "vitaminc_fact_verification/task.json").write_text(json.dumps({"examples": examples}))
    (folder / "gem/xsum/task.json").write_text(json.dumps(
        {"examples": [{"input": s, "target": t, "comment": ""} for s, t in xsum_pairs]}))


def _write_bbc(folder, articles):
    for i, (topic, title, lead, body, encoding) in enumerate(articles):
        d = folder / "bbcnews" / topic
        d.mkdir(parents=True, exist_ok=True)
        text = f"{title}\n\n{lead}\n\n" + "\n\n".join(body) + "\n"
        (d / f"{i:03d}.txt").write_bytes(text.encode(encoding))


@pytest.fixture()
def fake_assets(tmp_path, monkeypatch):
    """Small assets with duplicates, plot lines, a cp1252 file, and split sizes shrunk to fit them."""
    rt = [["plot", f"A synopsis line {i}.", "M", "True"] for i in range(5)]
    rt += [["fresh" if i % 3 else "rotten", f"Review sentence number {i} is here.", f"M{i % 7}", "True"]
           for i in range(40)]
    rt += [["fresh", "REVIEW  sentence number 1 is here.", "M1", "True"]]  # case/space duplicate of #1
    _write_rt(tmp_path / "rt-polarity", rt)
    vit = []
    for p in range(30):
        for j in range(4):
            vit.append((f"Page -LRB-{p}-RRB-", f"evidence {p}-{j} about things .", f"claim {p}-{j} .",
                        ("True", "False", "Neither")[(p + j) % 3]))
    vit.append(vit[0])  # exact duplicate
    _write_bigbench(tmp_path / "bigbench", vit, [(f"doc {i}\nmore text", f" sum {i} ") for i in range(7)])
    arts = [("tech", f"Title {i}", f"Lead sentence {i}.", [f"Body {i} para one.", f"Body {i} para two."], "utf-8")
            for i in range(30)]
    arts.append(("business", "Dup", "Lead sentence 3.", ["Body 3 para one.", "Body 3 para two."], "utf-8"))
    arts.append(("sport", "Money", "Fee of \u00a315.8m paid.", ["A transfer fee of \u00a315.8m."], "cp1252"))
    arts.append(("sport", "Short", "only a lead", [], "utf-8"))  # no body: skipped
    _write_bbc(tmp_path / "bbc-news", arts)
    small = {"rt-polarity": {"train": 26, "validation": 7, "test": 7},
             "vitaminc": {"train": 40, "validation": 10, "test": 20},
             "bbc-xsum": {"train": 17, "validation": 5, "test": 9, "test_xsum": 7}}
    for name, splits in small.items():
        monkeypatch.setitem(tasks.TASKS, name, dataclasses.replace(tasks.TASKS[name], splits=splits))
    return {a: tmp_path / a for a in ("rt-polarity", "bigbench", "bbc-news")}


def _load(name, fake_assets, tmp_path, **kw):
    return tasks.load_task(name, cache_dir=tmp_path / "cache", asset_dirs=fake_assets, **kw)


def test_rt_polarity_build(fake_assets, tmp_path):
    d = _load("rt-polarity", fake_assets, tmp_path)
    assert {s: len(d[s]) for s in d} == {"train": 26, "validation": 7, "test": 7}  # 40 unique, no plot
    assert d["train"].features["label"].names == ["negative", "positive"]
    assert d["train"].column_names == ["text", "label"]
    texts = [t for s in d for t in d[s]["text"]]
    assert not any("synopsis" in t for t in texts)
    assert len({tasks._norm_key(t) for t in texts}) == len(texts) == 40
    row = next(r for s in d for r in d[s] if r["text"] == "Review sentence number 3 is here.")
    assert row["label"] == 0  # rotten -> negative


def test_builds_are_deterministic_and_cached(fake_assets, tmp_path):
    a = _load("vitaminc", fake_assets, tmp_path)
    cached = list((tmp_path / "cache").glob("vitaminc-*"))
    assert len(cached) == 1 and (cached[0] / tasks._COMPLETE).is_file()
    b = _load("vitaminc", fake_assets, tmp_path)  # from the cache
    c = tasks.load_task("vitaminc", cache_dir=tmp_path / "other", asset_dirs=fake_assets)  # rebuilt
    for s in a:
        assert a[s].to_dict() == b[s].to_dict() == c[s].to_dict()
    assert not [p for p in (tmp_path / "cache").iterdir() if ".tmp-" in p.name]  # no temp left


def test_incomplete_cache_is_rebuilt(fake_assets, tmp_path):
    _load("rt-polarity", fake_assets, tmp_path)
    folder = next((tmp_path / "cache").glob("rt-polarity-*"))
    (folder / tasks._COMPLETE).unlink()  # as if killed before the marker was written
    for f in folder.rglob("*.arrow"):
        f.write_bytes(b"garbage")
    d = _load("rt-polarity", fake_assets, tmp_path)
    assert len(d["test"]) == 7 and (folder / tasks._COMPLETE).is_file()


def test_stale_temp_folders_are_removed(fake_assets, tmp_path):
    d = _load("rt-polarity", fake_assets, tmp_path)
    target = next((tmp_path / "cache").glob("rt-polarity-*"))
    stale = tmp_path / "cache" / f".{target.name}.tmp-killed"  # what a killed build leaves
    stale.mkdir()
    (stale / "half.arrow").write_bytes(b"x")
    _load("rt-polarity", fake_assets, tmp_path, rebuild=True)
    assert not stale.exists()
    assert len(_load("rt-polarity", fake_assets, tmp_path)["test"]) == len(d["test"])


_RACE = """
import dataclasses, json, sys
from petl import tasks
spec = tasks.TASKS["rt-polarity"]
tasks.TASKS["rt-polarity"] = dataclasses.replace(spec, splits={"train": 26, "validation": 7, "test": 7})
d = tasks.load_task("rt-polarity", cache_dir=sys.argv[1], asset_dirs={"rt-polarity": sys.argv[2]})
print(json.dumps(d["test"]["text"][:]))
"""


@pytest.mark.slow
def test_concurrent_builds_agree(fake_assets, tmp_path):
    import os
    import subprocess
    import sys

    cache = tmp_path / "race"
    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, "-c", _RACE, str(cache), str(fake_assets["rt-polarity"])],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for _, e in outs]
    first, second = (json.loads(o.strip().splitlines()[-1]) for o, _ in outs)
    assert first == second and len(first) == 7
    assert len(list(cache.glob("rt-polarity-*"))) == 1 and not list(cache.glob(".*.tmp-*"))


def test_vitaminc_build_splits_by_page(fake_assets, tmp_path):
    d = _load("vitaminc", fake_assets, tmp_path)
    assert {s: len(d[s]) for s in d} == {"train": 40, "validation": 10, "test": 20}
    assert d["train"].features["label"].names == ["True", "False", "Neither"]
    assert d["test"][0]["text_pair"].startswith("Page (")  # PTB brackets undone, page title kept
    pages = {s: set(d[s]["page"]) for s in d}
    assert not (pages["train"] & pages["validation"]) and not (pages["train"] & pages["test"])
    assert not (pages["validation"] & pages["test"])
    row = d["test"][0]
    p, j = row["text"].split()[1].split("-")
    assert d["test"].features["label"].int2str(row["label"]) == ("True", "False", "Neither")[(int(p) + int(j)) % 3]


def test_bbc_xsum_build(fake_assets, tmp_path):
    d = _load("bbc-xsum", fake_assets, tmp_path)
    # 30 + cp1252 one = 31 unique articles (duplicate and body-less skipped): 5 dev, 9 test, 17 train
    assert {s: len(d[s]) for s in d} == {"train": 17, "validation": 5, "test": 9, "test_xsum": 7}
    rows = [r for s in ("train", "validation", "test") for r in d[s]]
    money = next(r for r in rows if r["id"].startswith("sport/"))
    assert money["target"] == "Fee of \u00a315.8m paid." and money["source"] == "A transfer fee of \u00a315.8m."
    r3 = next(r for r in rows if r["target"] == "Lead sentence 3.")
    assert r3["source"] == "Body 3 para one.\nBody 3 para two."  # a paragraph a line, lead not in it
    assert d["test_xsum"][2] == {"source": "doc 2\nmore text", "target": "sum 2", "id": "gem-xsum/2"}
    ids = [set(d[s]["id"]) for s in ("train", "validation", "test")]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])


def test_missing_asset_files_fail_clearly(fake_assets, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="bbcnews"):
        tasks.load_task("bbc-xsum", cache_dir=tmp_path / "c", asset_dirs={**fake_assets, "bbc-news": empty})


# ---- integrity of the built cache ----


def _cached(tmp_path, name="rt-polarity"):
    return next((tmp_path / "cache").glob(f"{name}-*"))


def _arrow(folder, split="train"):
    return next((folder / split).glob("*.arrow"))


def test_cache_manifest_lists_every_file_with_size_and_sha256(fake_assets, tmp_path):
    import hashlib

    _load("rt-polarity", fake_assets, tmp_path)
    folder = _cached(tmp_path)
    manifest = json.loads((folder / tasks._MANIFEST).read_text())
    listed = {e["path"]: e for e in manifest["files"]}
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert set(listed) == on_disk - {tasks._MANIFEST, tasks._VERIFIED}
    assert tasks._COMPLETE in listed and "train/dataset_info.json" in listed
    for rel, e in listed.items():
        data = (folder / rel).read_bytes()
        assert (e["size"], e["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())


def test_truncated_arrow_file_is_rebuilt_with_one_line(fake_assets, tmp_path, capsys):
    want = _load("rt-polarity", fake_assets, tmp_path)["train"].to_dict()  # read now: the cache is memory-mapped
    arrow = _arrow(_cached(tmp_path))
    size = arrow.stat().st_size
    arrow.write_bytes(arrow.read_bytes()[: size // 2])
    capsys.readouterr()
    again = _load("rt-polarity", fake_assets, tmp_path)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"petl.tasks: not using the cache {arrow.parents[1]}: ")
    assert f"train/{arrow.name} is {size // 2:,} bytes, the manifest says {size:,}; rebuilding it" in err[0]
    assert again["train"].to_dict() == want


def test_same_size_damage_is_hashed_when_mtime_changes(fake_assets, tmp_path, capsys):
    want = _load("rt-polarity", fake_assets, tmp_path)["test"].to_dict()
    arrow = _arrow(_cached(tmp_path), "test")
    data = bytearray(arrow.read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = bytes(64)  # the middle of the column data: still loads
    arrow.write_bytes(bytes(data))
    st = arrow.stat()
    os.utime(arrow, ns=(st.st_atime_ns, st.st_mtime_ns + 10**10))
    capsys.readouterr()
    again = _load("rt-polarity", fake_assets, tmp_path)
    assert f"test/{arrow.name} has the manifest's size but not its sha256" in capsys.readouterr().err
    assert again["test"].to_dict() == want


def test_normal_load_does_not_hash(fake_assets, tmp_path, monkeypatch):
    from petl import files

    _load("rt-polarity", fake_assets, tmp_path)
    monkeypatch.setattr(files, "sha256", lambda p: pytest.fail(f"hashed {p} on a normal load"))
    for _ in range(2):
        assert len(_load("rt-polarity", fake_assets, tmp_path)["test"]) == 7


def test_cache_that_pyarrow_cannot_read_is_rebuilt_not_a_raw_oserror(fake_assets, tmp_path, capsys):
    """A cut arrow file whose manifest entry matches it (damage the manifest cannot see) fails inside
    pyarrow; that failure leads to a rebuild, not to pyarrow's OSError."""
    import hashlib

    want = _load("rt-polarity", fake_assets, tmp_path)["train"].to_dict()
    folder = _cached(tmp_path)
    arrow = _arrow(folder)
    cut = arrow.stat().st_size // 2  # inside the record batch's body: pyarrow raises OSError
    arrow.write_bytes(arrow.read_bytes()[:cut])
    manifest = json.loads((folder / tasks._MANIFEST).read_text())
    for e in manifest["files"]:
        if e["path"] == f"train/{arrow.name}":
            e.update(size=cut, sha256=hashlib.sha256(arrow.read_bytes()).hexdigest())
    (folder / tasks._MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(OSError, match="Expected to be able to read"):  # a raw load of this folder
        datasets.load_from_disk(str(folder))
    capsys.readouterr()
    again = _load("rt-polarity", fake_assets, tmp_path)
    assert "it does not load (OSError: Expected to be able to read" in capsys.readouterr().err
    assert again["train"].to_dict() == want


def test_cache_that_never_loads_is_one_clear_error(fake_assets, tmp_path, monkeypatch):
    _load("rt-polarity", fake_assets, tmp_path)

    def cut(path, *args, **kwargs):
        raise OSError("Expected to be able to read 4096 bytes for message body, got 200")

    monkeypatch.setattr(tasks.datasets, "load_from_disk", cut)
    with pytest.raises(tasks.TaskCacheError) as info:
        _load("rt-polarity", fake_assets, tmp_path)
    msg = str(info.value)
    assert str(_cached(tmp_path)) in msg and "Expected to be able to read" in msg
    assert "Delete that folder" in msg and "PETL_TASK_CACHE" in msg
    assert not isinstance(info.value, OSError)


def test_cache_built_before_manifests_is_rebuilt(fake_assets, tmp_path, capsys):
    _load("rt-polarity", fake_assets, tmp_path)
    folder = _cached(tmp_path)
    (folder / tasks._MANIFEST).unlink()  # what the previous builds left: the summary file only
    capsys.readouterr()
    assert len(_load("rt-polarity", fake_assets, tmp_path)["test"]) == 7
    assert "built before caches had a manifest of their files" in capsys.readouterr().err
    assert (folder / tasks._MANIFEST).is_file()


def test_full_disk_during_build_names_the_folder_and_fix(fake_assets, tmp_path, monkeypatch):
    import errno

    def save_then_fill(self, path, *args, **kwargs):
        (Path(path) / "train").mkdir(parents=True)
        (Path(path) / "train" / "data-00000-of-00001.arrow").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tasks.datasets.DatasetDict, "save_to_disk", save_then_fill)
    with pytest.raises(tasks.TaskCacheError) as info:
        _load("rt-polarity", fake_assets, tmp_path)
    msg = str(info.value)
    assert f"building its cache in {tmp_path / 'cache'} failed, the disk is full (" in msg and " MB free)" in msg
    assert "set PETL_TASK_CACHE (or PETL_ASSETS) to a folder on a disk with room" in msg
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")] == []


# ---- the real embedded assets (when already fetched) ----


@pytest.mark.parametrize("name", [
    pytest.param("rt-polarity", marks=pytest.mark.needs_assets("rt-polarity")),
    pytest.param("vitaminc", marks=pytest.mark.needs_assets("bigbench")),            # not fetched by `make test`
    pytest.param("bbc-xsum", marks=pytest.mark.needs_assets("bbc-news", "bigbench"))])
def test_real_task_sizes_and_no_overlap(name):
    spec = tasks.TASKS[name]
    d = tasks.load_task(name)
    assert {s: len(d[s]) for s in d} == dict(spec.splits)
    key_cols = spec.text_columns
    keys = {s: {tuple(tasks._norm_key(r[c]) for c in key_cols) for r in d[s]} for s in d}
    for s in d:
        assert len(keys[s]) == len(d[s]), f"{name}/{s} has duplicates"
    assert not (keys["train"] & keys["validation"]) and not (keys["train"] & keys["test"])
    assert not (keys["validation"] & keys["test"])
    if name == "vitaminc":  # no claim and no evidence sentence shared between splits either
        for col in ("text", "text_pair", "page"):
            sets = {s: set(d[s][col]) for s in d}
            assert not (sets["train"] & sets["test"]) and not (sets["validation"] & sets["test"])
            assert not (sets["train"] & sets["validation"])
    if name == "bbc-xsum":
        targets = {s: set(d[s]["target"]) for s in d}
        assert not (targets["train"] & targets["test"]) and not (targets["train"] & targets["test_xsum"])
    if spec.kind == "classification":
        summary = tasks.split_summary(d)
        for s in d:  # every class present in every split
            assert len(summary[s]["labels"]) == spec.num_labels


# ---- hub tasks offline ----


def test_hub_task_offline_fails_fast_naming_stand_in(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(tasks.datasets, "load_dataset",
                        lambda *a, **k: (_ for _ in ()).throw(ConnectionError("OfflineModeIsEnabled")))
    with pytest.raises(tasks.TaskUnavailableError, match="'rt-polarity'"):
        tasks.load_task("sst2")
    with pytest.raises(tasks.TaskUnavailableError, match="'en-ro-l10n'"):
        tasks.load_task("wmt16-en-ro")


def test_hub_unreachable_fails_within_timeout(monkeypatch):
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    # a non-routable address: the connection attempt must give up after the timeout, not retry for minutes
    monkeypatch.setenv("HF_ENDPOINT", "https://10.255.255.1:443")
    called = []
    monkeypatch.setattr(tasks.datasets, "load_dataset", lambda *a, **k: called.append(a))
    start = time.monotonic()
    with pytest.raises(tasks.TaskUnavailableError, match="'vitaminc'.*|not reachable"):
        tasks.load_task("mnli", hub_timeout=0.5)
    assert time.monotonic() - start < 5
    assert not called


# ---- lead baseline ----


def test_lead_baseline():
    src = ["The first sentence here. The second one.\nA new paragraph.", "  one two three four  "]
    assert tasks.lead_baseline(src) == ["The first sentence here.", "one two three four"]
    assert tasks.lead_baseline(src, 3) == ["The first sentence", "one two three"]
    with pytest.raises(ValueError, match="n_words"):
        tasks.lead_baseline(src, 0)


# ---- hub tasks, with load_dataset faked in the hub datasets' own formats ----


def _fake_hub(path, config=None, **kwargs):
    D, DD = datasets.Dataset.from_dict, datasets.DatasetDict
    cls = lambda names: datasets.Features({"sentence": datasets.Value("string"),  # noqa: E731
                                           "label": datasets.ClassLabel(names=names), "idx": datasets.Value("int32")})
    if (path, config) == ("nyu-mll/glue", "sst2"):
        rows = lambda n, off: {"sentence": [f"s{i}" for i in range(off, off + n)],  # noqa: E731
                               "label": [i % 2 for i in range(n)], "idx": list(range(n))}
        f = cls(["negative", "positive"])
        return DD({"train": D(rows(1100, 0), features=f), "validation": D(rows(872, 5000), features=f),
                   "test": D(rows(5, 9000), features=f)})
    if (path, config) == ("nyu-mll/glue", "mnli"):
        rows = lambda n, off: {"premise": [f"p{i}" for i in range(off, off + n)],  # noqa: E731
                               "hypothesis": [f"h{i}" for i in range(off, off + n)],
                               "label": [i % 3 for i in range(n)], "idx": list(range(n))}
        return DD({"train": D(rows(2500, 0)), "validation_matched": D(rows(9815, 10**5)),
                   "validation_mismatched": D(rows(9832, 2 * 10**5))})
    if path == "EdinburghNLP/xsum":
        rows = lambda n: {"document": ["d"] * n, "summary": ["s"] * n, "id": ["0"] * n}  # noqa: E731
        return DD({"train": D(rows(4)), "validation": D(rows(2)), "test": D(rows(3))})
    if (path, config) == ("wmt/wmt16", "ro-en"):
        rows = lambda n: {"translation": [{"en": f"hello {i}", "ro": f"salut {i}"} for i in range(n)]}  # noqa: E731
        return DD({"train": D(rows(4)), "validation": D(rows(2)), "test": D(rows(3))})
    raise AssertionError(f"unexpected hub dataset {path} {config}")


@pytest.fixture()
def fake_hub(monkeypatch):
    monkeypatch.setattr(tasks, "hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(tasks.datasets, "load_dataset", _fake_hub)


def test_hub_sst2_and_mnli_layout(fake_hub):
    sst2 = tasks.load_task("sst2")
    assert {s: len(sst2[s]) for s in sst2} == {"train": 100, "validation": 1000, "test": 872}
    assert sst2["test"].column_names == ["text", "label"]  # GLUE dev is our test
    assert not set(sst2["train"]["text"]) & set(sst2["validation"]["text"])
    mnli = tasks.load_task("mnli")
    assert len(mnli["test"]) == 9815 and len(mnli["test_mismatched"]) == 9832  # the full matched dev set
    assert len(mnli["validation"]) == 2000 and len(mnli["train"]) == 500
    assert mnli["train"].column_names == ["text", "text_pair", "label"]


def test_hub_generation_layout(fake_hub):
    xsum = tasks.load_task("xsum")
    assert xsum["test"].column_names == ["source", "target", "id"] and len(xsum["test"]) == 3
    enro = tasks.load_task("wmt16-en-ro")
    assert enro["validation"][1] == {"source": "hello 1", "target": "salut 1"}  # English -> Romanian


def test_did_you_mean():
    with pytest.raises(ValueError, match="did you mean 'vitaminc'"):
        tasks.get_task("vitamin-c")
