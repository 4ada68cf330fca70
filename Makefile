# The two commands of README.md: `make book` and `make test`. Both create .venv/ if it is missing
# (an existing one is never deleted) and install the pinned environment once per pyproject.toml change.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.petl-installed
# Assets (see `python -m petl.assets status`): the tests need MiniLM, SmolLM2 (its tokenizer), the Rotten
# Tomatoes sentences and the Romanian catalogues; the book needs every asset, the BIG-bench task files
# (VitaminC, XSum) included.
TEST_ASSETS := minilm smollm2-135m rt-polarity ro-l10n
BOOK_ASSETS := --all
ASSETS ?=

.PHONY: test book lab assets clean-book constraints

test: $(STAMP)
	$(PY) -m petl.assets fetch $(TEST_ASSETS)
	$(PY) -m pytest -q -n auto --dist loadfile --durations=25 tests   # a worker per core; a test file stays on one; the 25 slowest tests listed

book: $(STAMP)
	$(PY) -m petl.assets fetch $(BOOK_ASSETS)
	$(PY) -m petl sweep book/grids
	$(PY) -m petl.baselines
	$(PY) -m petl.book execute
	$(VENV)/bin/jupyter-book build -W --builder html book
	$(PY) .ci/check_offline_html.py book/_build/html
	$(PY) -m petl.book check book/_build/html
	$(PY) -m petl.browser book/_build/html
	@echo "The book is at book/_build/html/index.html"

# JupyterLab on the project, with this environment registered as the kernel "petl" (--user: other Jupyter
# installations of this user see it too). Progress bars are widgets there (petl.progress).
lab: $(STAMP)
	$(PY) -m ipykernel install --user --name petl --display-name "petl (.venv, Python 3.11)"
	$(VENV)/bin/jupyter lab --notebook-dir=. notebooks/

# `make assets` fetches the default assets; `make assets ASSETS=bigbench` (or ASSETS=--all) more.
assets: $(STAMP)
	$(PY) -m petl.assets fetch $(ASSETS)

clean-book:
	rm -rf book/_build

# After changing a pin in pyproject.toml and installing it: record the transitive versions again.
constraints: $(STAMP)
	{ sed -n '/^#/p' constraints.txt; $(PY) -m pip freeze --exclude-editable | sed -E 's/\+[A-Za-z0-9.]+$$//' | sort -f; } > constraints.txt.tmp
	mv constraints.txt.tmp constraints.txt

$(PY):
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run make PYTHON=/path/to/python3.11" >&2; exit 1; }
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(None if v == (3, 11) else "error: $(PYTHON) is Python %d.%d; this project is pinned to 3.11 (make PYTHON=...)" % v)'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "pip==26.3"

$(STAMP): pyproject.toml constraints.txt | $(PY)
	$(PY) -m pip install --no-compile -c constraints.txt -e ".[train,book,test,bench,lab,cluster]"
	@# Byte-compile the environment once (about a minute on 2 cores): where PYTHONDONTWRITEBYTECODE is set, as on
	@# this project's machines, no process writes its .pyc, so every interpreter (each pytest worker, papermill
	@# kernel and subprocess) compiled torch's, transformers' and peft's sources again, 10-15 s each. A cache only:
	@# a file that does not compile (torch ships a few for newer Pythons, never imported) fails as it would have.
	$(PY) -m compileall -q -j 0 $(VENV)/lib > /dev/null 2>&1 || true
	touch $@
