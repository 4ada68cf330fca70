"""Execute the book's chapter notebooks from the run records, and check the built pages.

    python -m petl.book execute [--runs-dir runs]     # every book/*.ipynb, in place (outputs saved)
    python -m petl.book check book/_build/html       # fails on an error, a NaN or an empty table in any page

The book itself never executes anything (`execute_notebooks: off`): `make book` runs the missing grid points,
writes the baseline records, executes the notebooks here, then builds the HTML with `jupyter-book build -W`.

Code is hidden by one rule (`code_tag`): the chapters that teach the library (`SHOWN_CODE`: the methods and the
unified view) show their code folded under each result (`hide-input`); every other chapter computes its tables,
figures and glued numbers from the records and shows only those (`remove-input`). `execute` applies the rule
and keeps no execution timestamps, so a rebuild from unchanged records leaves git clean.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

BOOK = Path(__file__).resolve().parent.parent / "book"


#: The chapters whose code is part of what they teach: shown, folded.
SHOWN_CODE = ("methods", "unified_view")
CODE_TAGS = ("hide-input", "remove-input", "remove-cell", "hide-cell", "hide-output")


def notebooks(book_dir: Path = BOOK) -> list[Path]:
    return sorted(book_dir.glob("*.ipynb"))


def code_tag(name: str) -> str:
    """The tag every code cell of chapter `name` (a notebook's stem) carries: see the module docstring."""
    return "hide-input" if name in SHOWN_CODE else "remove-input"


def apply_code_rule(notebook, name: str) -> None:
    """Give every code cell the chapter's tag (and no other hiding tag), and drop execution timestamps."""
    tag = code_tag(name)
    for cell in notebook.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type != "code":
            continue
        tags = [t for t in cell.metadata.get("tags", []) if t not in CODE_TAGS]
        cell.metadata["tags"] = [*tags, tag]


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
        apply_code_rule(notebook, path.stem)
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
