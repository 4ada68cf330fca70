"""Run book grid points in one Python process with petl.train.train (no papermill, no notebook copies).

    python scripts/run_grid_in_process.py book/grids/ch4_existing_rt.yaml ... --runs-dir runs [--only-task T]
        [--shard I/N]     # the I-th of N interleaved slices of the points (I from 0), for parallel workers

For a machine without papermill (the GPU machine used for the book's rt-polarity grids): same points, same
resolved configurations and run ids as `python -m petl sweep`, so the records count as that sweep's runs;
each record names the device it ran on. Complete runs are skipped; a failing run is listed and the loop
goes on.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from petl import runs  # noqa: E402
from petl.sweep import SWEEP_PARAMETERS, grid_files, read_grid  # noqa: E402
from petl.train import TrainConfig, resolve_run, train  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grids", nargs="+")
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--only-task", default=None)
    parser.add_argument("--shard", default="0/1", help="I/N: run points I, I+N, I+2N, ... (I from 0)")
    args = parser.parse_args()
    try:
        shard, shards = (int(x) for x in args.shard.split("/"))
        assert 0 <= shard < shards
    except (ValueError, AssertionError):
        parser.error(f"--shard must be I/N with 0 <= I < N, got {args.shard!r}")
    points = [p for f in grid_files(args.grids) for p in read_grid(f)]
    if args.only_task:
        points = [p for p in points if p.get("task") == args.only_task]
    points = points[shard::shards]
    failures = []
    for index, point in enumerate(points, 1):
        config = TrainConfig(**{k: v for k, v in point.items() if k not in SWEEP_PARAMETERS}, progress=False)
        rid = resolve_run(config)["run_id"]
        if runs.record_status(args.runs_dir, rid) == "complete":
            print(f"[{index}/{len(points)}] {rid} ... skipped (complete)", flush=True)
            continue
        start = time.time()
        try:
            record = train(config, runs_dir=args.runs_dir)
            status = record.status
        except Exception as error:  # carry on; list at the end
            status = f"failed: {type(error).__name__}: {error}"
        print(f"[{index}/{len(points)}] {rid} ... {status}, {time.time() - start:.1f} s", flush=True)
        if status != "complete":
            failures.append((rid, status))
    for rid, status in failures:
        print(f"FAILED {rid}: {status}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
