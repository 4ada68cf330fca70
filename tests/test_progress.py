"""Progress bars are widgets only for a person in JupyterLab; papermill, sweeps and logs get plain lines."""
import sys

import pytest

from petl import progress


@pytest.mark.parametrize("parent, widget", [
    ("/work/.venv/bin/python /work/.venv/bin/jupyter-lab", True),
    ("/usr/bin/python3 -m jupyter lab --no-browser", True),
    ("/usr/bin/python3 /usr/bin/jupyter-notebook", True),
    ("/work/.venv/bin/python -m petl sweep book/grids", False),      # papermill inside the sweep
    ("/work/.venv/bin/python /work/.venv/bin/papermill notebooks/train.ipynb out.ipynb", False),
    ("/work/.venv/bin/python -m petl.book execute", False),
    ("", False),
])
def test_a_bar_is_a_widget_only_in_a_kernel_a_jupyter_server_started(monkeypatch, parent, widget):
    monkeypatch.delenv(progress.ENV_VAR, raising=False)
    monkeypatch.setitem(sys.modules, "ipykernel", sys.modules.get("ipykernel") or object())
    monkeypatch.setattr(progress, "_kernel_parent_cmdline", lambda: parent)
    assert progress.widgets_wanted() is widget


def test_outside_a_kernel_and_by_choice(monkeypatch):
    monkeypatch.setattr(progress, "_kernel_parent_cmdline", lambda: "jupyter-lab")
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    monkeypatch.delenv(progress.ENV_VAR, raising=False)
    assert progress.widgets_wanted() is False                       # a terminal or a script
    monkeypatch.setenv(progress.ENV_VAR, "widget")
    assert progress.widgets_wanted() is True
    monkeypatch.setenv(progress.ENV_VAR, "lines")
    monkeypatch.setitem(sys.modules, "ipykernel", object())
    assert progress.widgets_wanted() is False
    from tqdm import tqdm
    bar = progress.bar(total=3, disable=True)
    assert type(bar) is tqdm
