"""The README's library example runs as written (on the embedded MiniLM)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.mark.needs_assets("minilm")
def test_readme_python_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no python example"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "147456 0.65%" in printed
    assert "['lora', 'prefix'] lora" in printed


def _numbers(record: dict) -> set[str]:
    """Every ratio a benchmark record holds (target values, their intervals, FLOP ratios) as printed (3 places)."""
    found = set()
    for target in record.get("targets", []):
        for value in [target.get("value"), *(target.get("ci95") or [])]:
            if isinstance(value, float):
                found.add(f"{value:.3f}")
    for shape in record.get("shapes", {}).values():
        for ratios in shape.get("work", {}).values():
            if isinstance(ratios, dict):
                found |= {f"{v:.3f}" for v in ratios.values() if isinstance(v, float)}
    return found


def test_readme_benchmark_numbers_come_from_the_named_records():
    import json
    section = README.read_text().split("## Benchmarks", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| comparison")]
    assert len(rows) >= 5  # a row naming no record reads from the one above ("same")
    record = None
    for row in rows:
        named = re.findall(r"`(cpu-[\w-]+\.json)`", row)
        if named:
            path = README.parent / "runs" / "benchmarks" / named[0]
            record = json.loads(path.read_text())
        numbers = set(re.findall(r"\d\.\d{3}", row))
        assert numbers and numbers <= _numbers(record), (row, numbers - _numbers(record))
