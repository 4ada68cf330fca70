"""Command line: ``python -m petl {sweep,train,runs}``.

    python -m petl sweep GRID [GRID ...] [--force] [--runs-dir runs] [--dry-run] [--jobs N] [--timeout S]
    python -m petl sweep --clean [--runs-dir runs]      # remove what killed runs and sweeps left behind
    python -m petl train --variant mam --task rt-polarity --model minilm [--max-steps 100] [--overrides '{"attn_bn": 16}']
    torchrun --nproc_per_node 2 -m petl train ...      # data parallel (gloo on CPU, nccl on GPUs)
    python -m petl runs [--runs-dir runs] [--failed]    # the complete runs as a table

Bad input (an unknown name, a grid parameter the notebook does not take, a malformed value) ends with a
one-line message and exit code 2, not a traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys


def _value(text: str):
    """A command-line value: int, float, bool, None, a JSON/YAML mapping or list, else the string."""
    low = text.strip().lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if text.strip()[:1] in "{[":
        import yaml
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise argparse.ArgumentTypeError(f"cannot parse {text!r}: {e}") from None
    return text


def _parser() -> argparse.ArgumentParser:
    from petl.train import TrainConfig
    p = argparse.ArgumentParser(prog="python -m petl", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("sweep", help="run notebooks/train.ipynb over YAML grids with papermill")
    s.add_argument("grids", nargs="*", metavar="GRID", help="YAML grid file(s) or folder(s) of them")
    s.add_argument("--runs-dir", default="runs")
    s.add_argument("--force", action="store_true", help="rerun points whose record is complete")
    s.add_argument("--dry-run", action="store_true", help="validate and list the points; run nothing")
    s.add_argument("--notebook", default=None, help="notebook to run (default notebooks/train.ipynb)")
    s.add_argument("--jobs", type=int, default=1,
                   help="points run at once, each with cores/jobs threads (default 1)")
    s.add_argument("--timeout", type=float, default=None,
                   help="seconds a point may run before it is stopped and reported failed (default: no limit)")
    s.add_argument("--executor", choices=("local", "slurm"), default="local",
                   help="local: run the points here (default); slurm: submit them as a SLURM job array (submitit) "
                        "and wait")
    s.add_argument("--slurm", action="append", default=[], metavar="KEY=VALUE",
                   help="a SLURM resource of every task, over the grid's 'slurm:' mapping, e.g. --slurm "
                        "partition=gpu --slurm gpus_per_node=1 --slurm time=600 (minutes)")
    s.add_argument("--clean", action="store_true",
                   help="remove the leftovers of killed runs and sweeps (temporary folders, working notebooks, "
                        "stale or damaged locks) and exit")

    t = sub.add_parser("train", help="train one run (the notebook's work without the notebook)")
    for f in dataclasses.fields(TrainConfig):
        default = f.default if f.default is not dataclasses.MISSING else None
        t.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=_value, default=default,
                       help=f"default: {default!r}")
    t.add_argument("--runs-dir", default="runs")
    t.add_argument("--force", action="store_true")

    r = sub.add_parser("runs", help="list the complete runs of a runs folder")
    r.add_argument("--runs-dir", default="runs")
    r.add_argument("--failed", action="store_true", help="include failed runs")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "sweep":
        from petl import runs, sweep
        if args.clean:
            removed = sweep.clean(args.runs_dir)
            print("\n".join(f"removed {p}" for p in removed) or f"nothing to clean in {args.runs_dir}")
            return 0
        if not args.grids:
            print("error: give GRID file(s) or folder(s), or --clean", file=sys.stderr)
            return 2
        try:
            kw = {"notebook": args.notebook} if args.notebook else {}
            slurm = {}
            for item in args.slurm:
                key, sep, value = item.partition("=")
                if not sep or not key:
                    raise sweep.GridError(f"--slurm {item!r}: give KEY=VALUE, e.g. --slurm partition=gpu")
                slurm[key] = _value(value)
            outcomes = sweep.sweep(args.grids, runs_dir=args.runs_dir, force=args.force,
                                   dry_run=args.dry_run, jobs=args.jobs, timeout=args.timeout,
                                   executor=args.executor, slurm=slurm, **kw)
        except (sweep.GridError, runs.RunsDirError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 1 if any(o.status == "failed" for o in outcomes) else 0

    if args.command == "train":
        from petl.train import TrainConfig, train
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        values = {k: v for k, v in vars(args).items() if k in fields}
        try:
            config = TrainConfig(**values).validate()
        except (ValueError, TypeError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        from petl.runs import RunsDirError
        from petl.train import RunConfigError
        try:
            record = train(config, runs_dir=args.runs_dir, force=args.force)
        except (RunsDirError, RunConfigError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if int(__import__("os").environ.get("RANK", "0")) == 0:
            print(json.dumps({"record": str(record.path), "status": record.status,
                              "dev": record.metrics.get("dev"), "test": record.metrics.get("test"),
                              "reason": record.metrics.get("reason")}))
        return 0 if record.status == "complete" else 1

    if args.command == "runs":
        import pandas as pd

        from petl.runs import load_runs
        df = load_runs(args.runs_dir, include_failed=args.failed)
        if df.empty:
            print(f"no complete runs under {args.runs_dir}")
            return 0
        cols = [c for c in ("run_id", "status", "test." + str(df.get("primary_metric", pd.Series([""])).iloc[0]),
                            "wall_time_s") if c in df]
        with pd.option_context("display.width", 200, "display.max_colwidth", 80):
            print(df[cols].to_string(index=False))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
