"""Reference points that need no training, written as small records beside the runs.

`python -m petl.baselines [--runs-dir runs]` writes runs/baselines/<name>.json:
- bbc-xsum lead: the first sentence of the article body (LEAD-1), scored against the held-out lead sentence,
  on the same first test examples the SmolLM2 runs are scored on (100: the CPU default; 200: the GPU grid),
  and likewise on the real XSum pairs (split test_xsum);
- en-ro-l10n copy: the English source as its own translation, on the first 200 test messages (the CPU
  default) and on all 1,000;
- majority class for each classification stand-in (the accuracy of always answering the commonest label).
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from pathlib import Path

from petl import metrics, tasks
from petl.files import write_json


#: Test sizes the lead baseline is scored at: the default CPU budget's (100), the first GPU grid's (200) and the
#: protocol's full test sets (book/protocol: 200 bbc-xsum articles and all 1,001 real XSum pairs).
LEAD_SIZES = (100, 200, 1001)


def lead_record(task: str = "bbc-xsum", n_examples: int = 100) -> dict:
    """LEAD-1 on the first ``n_examples`` of the test split and of each extra test split (the examples a
    run with ``max_test_examples=n_examples`` is scored on). Named ``<task>-lead-<n>``."""
    data = tasks.load_task(task)
    spec = tasks.get_task(task)
    scores, examples = {}, {}
    for split in ("test", *spec.extra_splits):
        if split not in data:
            continue
        part = data[split].select(range(min(n_examples, len(data[split]))))
        scores[split] = metrics.compute_metrics(task, tasks.lead_baseline(part["source"]), part["target"])
        examples[split] = len(part)                    # what a run's num_examples.<split> says when it matches
    return dict(name=f"{task}-lead-{n_examples}", task=task, kind="lead-1", test_examples=n_examples,
                examples=examples, **scores)


#: Test sizes the copy baseline is scored at: the CPU default's first 200 test messages, and all 1,000.
COPY_SIZES = (200, 1000)


#: Dev messages the CPU default evaluates on (its ``max_eval_examples``): the copy baseline of its dev curve.
COPY_DEV = 64


def copy_record(task: str = "en-ro-l10n", n_examples: int = 1000, n_dev: int = COPY_DEV) -> dict:
    """Copy-the-source on the first ``n_examples`` test pairs of a translation task, and on the first ``n_dev``
    dev pairs: the English message itself as the "translation" (placeholders, option names and punctuation
    match). Named ``<task>-copy-<n>``."""
    data = tasks.load_task(task)

    def score(split, n):
        part = data[split].select(range(min(n, len(data[split]))))
        return len(part), metrics.compute_metrics(task, part["source"], part["target"])

    n_test, test = score("test", n_examples)
    n_val, validation = score("validation", n_dev)
    return dict(name=f"{task}-copy-{n_examples}", task=task, kind="copy-source", test_examples=n_test, test=test,
                validation_examples=n_val, validation=validation, examples={"test": n_test})


def majority_record(task: str, n_test: int | None = None, n_dev: int | None = None) -> dict:
    """Always answering the commonest training label, scored on all of test and of dev, or on their first
    ``n_test`` / ``n_dev`` examples (the 'learned' bar of petl.report.verdict is on dev)."""
    data = tasks.load_task(task)
    common, _ = Counter(data["train"]["label"]).most_common(1)[0]

    def accuracy(labels):                                             # 0-100, as the metrics
        return dict(accuracy=100.0 * sum(y == common for y in labels) / len(labels))

    test, dev = data["test"]["label"][:n_test], data["validation"]["label"][:n_dev]
    return dict(name=f"{task}-majority", task=task, kind="majority-class", test_examples=len(test),
                test=accuracy(test), validation_examples=len(dev), validation=accuracy(dev),
                examples={"test": len(test)})


def on_examples(task: str, num_examples: dict) -> dict:
    """The task's no-training baseline scored on the very examples a run was scored on (its metrics'
    ``num_examples``: the first n of each split): the majority class for classification, LEAD-1 for
    summarization, copying the source for translation. A record as the others, not written anywhere."""
    spec = tasks.get_task(task)
    n_test, n_dev = num_examples.get("test"), num_examples.get("validation")
    if spec.kind == "classification":
        return majority_record(task, n_test, n_dev)
    if spec.primary_metric == "bleu":
        return copy_record(task, n_test, n_dev)
    return lead_record(task, n_test)


def write(record: dict, runs_dir: str | os.PathLike) -> Path:
    """Write one baseline record atomically (petl.files.write_json)."""
    folder = Path(runs_dir) / "baselines"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{record['name']}.json"
    write_json(target, record, indent=2, sort_keys=True)
    return target


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m petl.baselines", description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", default="runs")
    args = parser.parse_args(argv)
    records = [*(lead_record("bbc-xsum", n) for n in LEAD_SIZES), *(copy_record("en-ro-l10n", n) for n in COPY_SIZES),
               majority_record("rt-polarity"), majority_record("vitaminc")]
    for record in records:
        print(write(record, args.runs_dir), json.dumps(record["test"]))


if __name__ == "__main__":
    main()
