"""petl.report: chapters read the records of their grids' run ids; one preset -> paper-row table; the book's
sources follow the code and figure rules; the import graph points one way."""

from __future__ import annotations

import ast
import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from petl import report
from petl.book import code_tag
from petl.report import paper, selection

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
CH5 = "book/grids/ch5_insertion.yaml"


# ---------------------------------------------------------------------------------------------------------------
# Selection by grid
# ---------------------------------------------------------------------------------------------------------------

def _copy_records(runs: Path, rids: list[str]) -> None:
    for rid in rids:
        (runs / rid).mkdir(parents=True)
        for name in ("config.json", "metrics.json"):
            shutil.copy(ROOT / "runs" / rid / name, runs / rid / name)


def test_grid_runs_loads_exactly_the_planned_ids(tmp_path):
    planned = selection.grid_points(CH5)
    assert len(planned) == 12
    runs = tmp_path / "runs"
    _copy_records(runs, [rid for _, rid in planned[:2]])
    # A record of the same variants that no grid point produces (another budget) is not read.
    other = next(p.name for p in (ROOT / "runs").glob("rt-polarity_minilm_full_seed0_150steps_*"))
    _copy_records(runs, [other])
    sel = report.grid_runs(CH5, directory=runs)
    assert list(sel.runs["run_id"]) == [rid for _, rid in planned[:2]]
    assert len(sel.planned) == 12 and len(sel.missing) == 10
    assert sel.pending().startswith("10 of 12 points have no record yet: ")
    assert ": sa_attn seed 2; pa_attn seeds 0, 1, 2;" in sel.pending()
    only = report.grid_runs((CH5, ["pa_ffn"]), directory=runs)
    assert {p["variant"] for _, p, _ in only.planned} == {"pa_ffn"} and only.runs.empty
    dotted = report.grid_runs(("book/grids/ch6_budget.yaml", {"overrides.attn_bn": 4}), directory=runs)
    assert len(dotted.planned) == 4


def test_every_planned_record_is_read_and_complete():
    """The committed records match the CPU grids' run ids (a grid edit that changed them would show here)."""
    for grid in selection.ROOT.joinpath("book", "grids").glob("*.yaml"):
        sel = report.grid_runs(str(grid.relative_to(ROOT)))
        assert not sel.missing, f"{grid.name}: {sel.pending()}"


def test_scale_size_and_label_come_from_the_resolved_options():
    row = {"variant": "lora_ffn", "petl.attn_mode": "none", "petl.ffn_mode": "lora", "petl.ffn_bn": 16,
           "petl.attn_bn": 200, "petl.lora_alpha": 64.0}
    assert selection.scale_of(row) == "4" and selection.size_of(row) == "r=16"
    assert selection.label_of(row) == "lora_ffn (r=16) s=4"
    row = {"variant": "scaled_pa", "petl.attn_mode": "none", "petl.ffn_mode": "adapter", "petl.ffn_bn": 16,
           "petl.attn_bn": 200, "petl.ffn_adapter_scalar": "learnable_scalar"}
    assert selection.scale_of(row) == "learned" and selection.label_of(row) == "scaled_pa (r=16) s=learned"
    row["petl.ffn_adapter_scalar"] = 1.0
    assert selection.label_of(row) == "scaled_pa (r=16)"


def test_rows_are_picked_by_columns_never_by_label():
    table = pd.DataFrame({"label": ["scaled_pa (r=16)", "scaled_pa (r=16) s=4"], "variant": ["scaled_pa"] * 2,
                          "scale": ["1", "4"], "size": ["r=16"] * 2, "mean": [60.0, 75.0], "std": [0.1, 0.2],
                          "seeds": [3, 3]})
    with pytest.raises(ValueError, match="give the size or scale"):
        report.pick(table, "scaled_pa")
    assert report.versus(table, {"variant": "scaled_pa", "scale": "4"}, {"variant": "scaled_pa", "scale": "1"}) \
        == "above (+15.0)"
    assert report.compare(table, "lora", ["scaled_pa"]).startswith("not measured yet")


# ---------------------------------------------------------------------------------------------------------------
# The preset -> paper-row table
# ---------------------------------------------------------------------------------------------------------------

def test_presets_name_paper_rows_and_presets_that_exist():
    import petl
    table, results = paper.presets(), paper.paper_results()
    known = set(zip(results["table"], results["method"]))
    assert not [r for r in zip(table["table"], table["paper_method"]) if r not in known]
    assert set(table["variant"]) <= set(petl.VARIANTS)
    assert set(table["model"]) <= set(report.accounting.ROUNDING)
    assert not table.duplicated(["table", "paper_method", "variant", "attn_bn", "ffn_bn", "scale"]).any()


COUNTED = [row for _, row in paper.presets().iterrows() if row["counted"]]


@pytest.mark.parametrize("row", COUNTED, ids=[f"{r['table']}-{r['variant']}-{r['attn_bn']}-{r['ffn_bn']}"
                                              for r in COUNTED])
def test_counted_rows_give_the_papers_percentage(row):
    """petl's count at the paper's sizes, written as the paper writes its % column, is the paper's number, except
    for the rows whose note says why not (and those still differ)."""
    from petl.accounting import paper_pct_string
    ours = paper_pct_string(report.accounting.row_count(row)["paper_pct"], report.accounting.ROUNDING[row["model"]])
    agrees = float(ours) == report.accounting.paper_pct(row)
    assert agrees == (row["note"] == ""), (ours, report.accounting.paper_pct(row), row["note"])


def test_a_run_finds_its_paper_row():
    def entry(variant, attn=200, ffn=512, scale=""):
        return {"variant": variant, "scale": scale, "petl.attn_bn": attn, "petl.ffn_bn": ffn}
    generation = report.GENERATION_TABLES
    # At the paper's sizes, the exact row (first among the tables where several print it).
    assert paper.paper_row(entry("pa_ffn", ffn=200, scale="1"), generation)["table"] == "table3"
    assert paper.paper_row(entry("lora", scale="4"), generation)["paper_method"] == "LoRA attn r=200"
    assert paper.paper_row(entry("scaled_pa", scale="1"), generation)["paper_method"] == "parallel adapter ffn"
    # At MiniLM's sizes, the method's row at the nearest of the paper's sizes.
    assert paper.paper_row(entry("prefix", attn=4), "table4")["paper_method"] == "prefix tuning l=30"
    assert paper.paper_row(entry("pa_ffn", ffn=16, scale="1"), "table6")["paper_method"] == \
        "parallel adapter ffn r=1024"
    assert paper.paper_row(entry("lora_ffn", ffn=16, scale="1"), "table5")["paper_method"] == "LoRA ffn s=1"
    assert paper.paper_row(entry("prompt_tuning"), "table2") is None


# ---------------------------------------------------------------------------------------------------------------
# The book's sources
# ---------------------------------------------------------------------------------------------------------------

NOTEBOOKS = sorted(BOOK.glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebooks_follow_the_code_and_figure_rules(path):
    cells = json.loads(path.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    markdown = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    for cell in cells:
        assert "execution" not in cell.get("metadata", {}), "execution timestamps change at every rebuild"
    for cell in code:
        tags = cell.get("metadata", {}).get("tags", [])
        assert code_tag(path.stem) in tags, f"{path.name}: a code cell without {code_tag(path.stem)}"
        source = "".join(cell["source"])
        assert "plt.show()" not in source, "figures are glued and placed with a numbered caption"
        for key in re.findall(r'glue_figure\("([\w-]+)"', source):
            placed = re.search(r"```\{glue:figure\} " + key + r"\n:name: fig-[\w-]+\n\n\S", markdown)
            assert placed, f"{path.name}: figure {key} has no named, captioned glue:figure"
    assert "\\text{lora_alpha}" not in markdown and "\\text{lora\\_alpha}" not in markdown


def test_chapters_name_grids_that_exist():
    grids = report.provenance.chapter_grids()
    assert {"existing_methods", "insertion_form", "modified_representation", "composition", "mam"} <= set(grids)
    # a chapter that shows a verdict (C1) follows its claim's grids and the sweeps those choose their rate from
    assert {"book/protocol/rt.yaml", "book/protocol/rt_lr.yaml", "book/protocol/rt_lr_full.yaml"} <= set(
        grids["existing_methods"])
    for names in grids.values():
        for name in names:
            assert (ROOT / name).is_file(), name


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
    return out


def test_imports_point_one_way():
    """report -> runs (and sweep.plan); the run machinery never imports report, report never imports the
    benchmark package (the benchmark imports report's reader of its records)."""
    for name in ("runs", "sweep", "train", "files"):
        path = ROOT / "petl" / f"{name}.py"
        if path.is_file():
            assert not {m for m in _imports(path) if m.startswith("petl.report")}, name
    for path in (ROOT / "petl" / "report").glob("*.py"):
        assert not {m for m in _imports(path) if m == "benchmarks" or m.startswith("benchmarks.")}, path.name


def test_a_method_with_some_seeds_at_the_majority_class_is_named_with_their_count(monkeypatch):
    from petl.report import prose
    monkeypatch.setattr(prose, "baseline", lambda name: {"test": {"accuracy": 60.2}})
    runs = pd.DataFrame({"label": ["a"] * 3 + ["b"] * 3 + ["c"] * 3, "seed": [0, 1, 2] * 3,
                         "test.accuracy": [60.2, 60.2, 75.0, 60.2, 60.3, 60.1, 71.0, 73.0, 72.0],
                         "parameters.paper_pct": [0.5] * 9, "variant": ["mam"] * 9, "size": [None] * 9,
                         "scale": [None] * 9, "petl.attn_bn": [16] * 9, "petl.ffn_bn": [16] * 9})
    table = report.summarize(runs, "accuracy")
    assert table["values"].tolist()[0] == [60.2, 60.2, 75.0]
    assert prose.stuck_at_majority(table, "rt-polarity") == "a (2 of 3 seeds), b (the majority class scores 60.2)"
    assert prose.majority_verdict(table, "rt-polarity") == "1 of the 3 methods left the majority class in every seed"


def test_cross_machine_pairs_a_rerun_with_its_record_and_the_seed_spread(tmp_path):
    """A point of runs/ run again in runs/cross-machine (same run id, another device) is set beside its record,
    with the spread over that point's seeds in runs/; records are copied from committed ones, nothing trains."""
    from petl.report import provenance
    runs = tmp_path / "runs"
    seeds = sorted(ROOT.glob("runs/rt-polarity_minilm_lora_seed[0-2]_100steps_*"))
    assert len(seeds) == 3
    for record in seeds:
        shutil.copytree(record, runs / record.name, ignore=shutil.ignore_patterns("weights", "*.ipynb"))
    rerun = runs / "cross-machine" / seeds[0].name
    shutil.copytree(runs / seeds[0].name, rerun)
    config, metrics = (json.loads((rerun / n).read_text()) for n in ("config.json", "metrics.json"))
    config["device"] = {"device": "cpu", "cpu": "x86_64", "cpu_count": 2, "num_processes": 1, "torch_threads": 2}
    metrics["test"]["accuracy"] += 0.5
    (rerun / "config.json").write_text(json.dumps(config))
    (rerun / "metrics.json").write_text(json.dumps(metrics))
    pairs = provenance.cross_machine(runs)
    assert len(pairs) == 1
    row = pairs.iloc[0]
    tests = [json.loads((r / "metrics.json").read_text())["test"]["accuracy"] for r in seeds]
    assert row["run id"] == seeds[0].name and row["difference"] == pytest.approx(0.5)
    assert (row["device"], row["rerun device"], row["seeds"]) == ("NVIDIA H200", "cpu", 3)
    assert row["seed sd"] == pytest.approx(pd.Series(tests).std())
    assert provenance.cross_machine_summary(pairs) == {"pairs": "1", "across": "1", "largest": "0.5",
                                                        "sd": f"{pd.Series(tests).std():.1f}"}
    assert selection.records(runs)["run_id"].tolist().count(seeds[0].name) == 1   # the rerun is no record of runs/
    assert provenance.cross_machine_summary(provenance.cross_machine(tmp_path / "empty"))["pairs"] == "0"
