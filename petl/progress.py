"""Progress bars: a widget in JupyterLab / Notebook, plain lines everywhere else (papermill, a terminal, a log).

A bar is a widget only in a kernel that a Jupyter server started for a person looking at it, so that ``python -m
petl sweep``, ``papermill`` and ``python -m petl.book execute`` (kernels started by nbclient) keep text lines
in the executed notebook, readable in its record. ``PETL_PROGRESS=widget`` or ``PETL_PROGRESS=lines`` decides
instead.
"""
from __future__ import annotations

import os
import re
import sys

ENV_VAR = "PETL_PROGRESS"
# A kernel's parent process, as a Jupyter server runs it (jupyter-lab, jupyter lab, jupyter-server, notebook).
_SERVER = re.compile(r"jupyter[-_ ]?(lab|notebook|server)|jupyterlab|notebook\.app|jupyter_server")


def _kernel_parent_cmdline() -> str:
    import psutil
    try:
        return " ".join(psutil.Process().parent().cmdline())
    except (psutil.Error, AttributeError):
        return ""


def widgets_wanted() -> bool:
    """True in an IPython kernel started by a Jupyter server, with ipywidgets installed (or PETL_PROGRESS=widget)."""
    choice = os.environ.get(ENV_VAR, "").strip().lower()
    if choice in ("lines", "widget"):
        return choice == "widget"
    if "ipykernel" not in sys.modules:
        return False
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return bool(_SERVER.search(_kernel_parent_cmdline()))


def bar(**kwargs):
    """A tqdm bar: tqdm.notebook's widget where `widgets_wanted`, else the plain one."""
    if widgets_wanted():
        from tqdm.notebook import tqdm
    else:
        from tqdm import tqdm
    return tqdm(**kwargs)
