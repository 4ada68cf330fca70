"""Execute the book's chapter notebooks from the run records, and check the built pages.

    python -m petl.book execute [--runs-dir runs]     # every book/*.ipynb, in place (outputs saved)
    python -m petl.book check book/_build/html       # fails on an error, a NaN or an empty table in any page

The book itself never executes anything (`execute_notebooks: off`): `make book` runs the missing grid points,
writes the baseline records, executes the notebooks here, then builds the HTML with `jupyter-book build -W`.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

BOOK = Path(__file__).resolve().parent.parent / "book"


def notebooks(book_dir: Path = BOOK) -> list[Path]:
    return sorted(book_dir.glob("*.ipynb"))


def execute(book_dir: Path = BOOK, runs_dir: str | None = None, timeout: int = 900) -> None:
    """Run every chapter notebook top to bottom in a fresh kernel and save it with its outputs."""
    import nbformat
    from nbclient import NotebookClient

    if runs_dir is not None:
        os.environ["PETL_RUNS_DIR"] = str(Path(runs_dir).resolve())
    # The kernels inherit these: no progress bars, load reports (their timings and order vary) or tqdm's
    # notebook-widget warning (it prints the local install path) in the outputs.
    os.environ.update(HF_HUB_DISABLE_PROGRESS_BARS="1", TRANSFORMERS_VERBOSITY="error",
                      PYTHONWARNINGS="ignore:IProgress not found")
    for path in notebooks(book_dir):
        start = time.time()
        notebook = nbformat.read(path, as_version=4)
        NotebookClient(notebook, timeout=timeout, kernel_name="python3", record_timing=False,  # no timestamps:
                       resources={"metadata": {"path": str(book_dir)}}).execute()  # a rebuild leaves git clean
        nbformat.write(notebook, path)
        print(f"executed {path.name} ({time.time() - start:.1f} s)", flush=True)


_NAN = re.compile(r"<td[^>]*>\s*(nan|NaN|None|inf|-inf)\s*</td>")


def check(build_dir: Path) -> list[str]:
    """Problems a reader would see: error outputs, tracebacks, NaN cells, tables without rows."""
    problems = []
    for page in sorted(build_dir.rglob("*.html")):
        if "_static" in page.parts or "genindex" in page.name or "search" in page.name:
            continue
        html = page.read_text(errors="replace")
        name = page.relative_to(build_dir)
        if "Traceback (most recent call last)" in html or 'class="output traceback' in html or "output_error" in html:
            problems.append(f"{name}: an error output")
        if _NAN.search(html):
            problems.append(f"{name}: a table cell shows {_NAN.search(html).group(1)}")
        for table in re.findall(r"<table.*?</table>", html, flags=re.S):
            if "<td" not in table:
                problems.append(f"{name}: an empty table")
                break
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m petl.book", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("execute")
    run.add_argument("--runs-dir", default=None)
    run.add_argument("--book-dir", default=str(BOOK))
    inspect = sub.add_parser("check")
    inspect.add_argument("build_dir")
    args = parser.parse_args(argv)
    if args.command == "execute":
        execute(Path(args.book_dir), args.runs_dir)
        return 0
    problems = check(Path(args.build_dir))
    for problem in problems:
        print(f"book check: {problem}", file=sys.stderr)
    print(f"book check: {len(problems)} problem(s) in {args.build_dir}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
