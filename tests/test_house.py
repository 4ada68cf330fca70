"""The house's promises: one configuration path, one run-id policy, one-way imports, small records."""
from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

from petl import runs, sweep
from petl.train_config import TrainConfig, resolve_run

ROOT = Path(__file__).resolve().parent.parent


def test_the_notebook_takes_exactly_the_train_config_fields_and_runs_dir_and_force():
    params = sweep.notebook_parameters(ROOT / "notebooks" / "train.ipynb")
    assert set(params) == {f.name for f in dataclasses.fields(TrainConfig)} | {"runs_dir", "force"}
    assert {name: params[name] for name in params if name not in ("runs_dir", "force")} == {
        f.name: f.default for f in dataclasses.fields(TrainConfig)}   # the notebook's defaults are TrainConfig's


def test_a_run_is_resolved_once_into_what_apply_receives_and_the_record_says():
    run = resolve_run(TrainConfig(variant="lora", overrides={"attn_bn": 8}))
    import petl
    assert run.method == petl.resolve("lora", attn_bn=8) and run.method.attn_bn == 8
    record = run.record_config()
    assert record["run_id"] == run.run_id == runs.run_id(record)
    assert record["petl"] == json.loads(json.dumps(run.method.to_dict(), default=str))
    assert record["train"]["max_steps"] == run.train.max_steps == 150            # the CPU budget, filled in


def test_a_train_field_added_later_at_its_default_keeps_every_run_id(monkeypatch):
    resolved = resolve_run(TrainConfig(variant="lora")).record_config()
    with_new = dict(resolved, train={**resolved["train"], "new_field": "off"})
    assert runs.run_id(with_new) != resolved["run_id"]                          # unknown to the policy: hashed
    monkeypatch.setattr(runs, "LATER_TRAIN_FIELDS", {**runs.LATER_TRAIN_FIELDS, "new_field": "off"})
    assert runs.run_id(with_new) == resolved["run_id"]                          # at its default: not hashed
    assert runs.run_id(dict(resolved, train={**resolved["train"], "new_field": "on"})) != resolved["run_id"]


def test_every_committed_record_is_named_by_the_hash_of_its_own_config():
    checked = 0
    for folder in runs.iter_records(ROOT / "runs"):
        config = json.loads((folder / "config.json").read_text())
        assert runs.run_id(config) == folder.name, folder.name
        checked += 1
    assert checked >= 90


def _imports(module_file: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(module_file.read_text())):
        # `import petl` (the package's lazy facade, petl/__init__.py) is not an edge; `from petl import io` is.
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("petl"):
            if node.module != "petl":
                names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("petl."))
    return names


def _graph() -> dict[str, set[str]]:
    files = {".".join(f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): f
             for f in (ROOT / "petl").rglob("*.py")}
    return {m: {n for n in _imports(f) if n in files and n != m} for m, f in files.items()}


def _reaches(graph, start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for n in graph.get(todo.pop(), ()):
            if n not in seen:
                seen.add(n)
                todo.append(n)
    return seen


def test_imports_point_one_way():
    """notebook -> sweep -> train -> core -> methods, and report -> runs (function-level imports count too).

    The one loop left is a late-bound callback: the save_pretrained that petl.apply installs calls petl.io.save,
    which reads what apply attached (core -> io at call time, io -> core at import time)."""
    graph = _graph()
    assert "petl.train" not in _reaches(graph, "petl.runs") and "petl.sweep" not in _reaches(graph, "petl.runs")
    assert "petl.train" not in _reaches(graph, "petl.train_config")
    assert not {"petl.train", "petl.sweep", "petl.runs", "petl.report"} & _reaches(graph, "petl.core")
    assert not {m for m in _reaches(graph, "petl.core") if not m.startswith(("petl.methods", "petl.config",
                                                                               "petl.sites", "petl.io",
                                                                               "petl.files", "petl.peft_format",
                                                                               "petl.core"))}
    assert "petl.train" not in {m for m in graph if m.startswith("petl.report")} and \
        not any("petl.train" in _reaches(graph, m) for m in graph if m.startswith("petl.report"))
    loops = {m for m in graph if m in _reaches(graph, m)}
    assert loops <= {"petl.core", "petl.io", "petl.peft_format"}, loops


def test_a_record_keeps_the_executed_notebook_without_images_and_with_one_stream_per_run(tmp_path):
    bar = [f"\r  {i}%|" for i in range(0, 101, 10)]
    nb = {"cells": [{"cell_type": "code", "source": "train()", "outputs": [
        *({"output_type": "stream", "name": "stderr", "text": t} for t in bar),
        {"output_type": "stream", "name": "stderr", "text": "\n"},
        {"output_type": "stream", "name": "stdout", "text": "record: runs/x\n"},
        {"output_type": "display_data", "data": {"image/png": "AAAA" * 1000, "text/plain": "<Figure>"}},
        {"output_type": "display_data", "data": {"application/vnd.jupyter.widget-view+json": {"model_id": "m1"},
                                                 "text/plain": "  40%|####      | 2/5"}}]}],
        "metadata": {"widgets": {"state": {"m1": {}}}}, "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps(nb))
    notebook = json.loads(sweep.record_notebook(path))
    kept = notebook["cells"][0]["outputs"]
    assert [o["output_type"] for o in kept] == ["stream", "stream", "display_data", "display_data"]
    assert kept[3]["data"] == {"text/plain": "  40%|####      | 2/5"} and "widgets" not in notebook["metadata"]
    assert kept[0]["text"] == "  100%|\n" and kept[1]["text"] == "record: runs/x\n"
    assert list(kept[2]["data"]) == ["text/plain"] and "history.csv" in kept[2]["data"]["text/plain"]
    for record in runs.iter_records(ROOT / "runs"):                 # the committed ones are kept that way too
        notebook = record / "train.ipynb"
        if notebook.exists():
            assert "image/png" not in notebook.read_text(), record.name
