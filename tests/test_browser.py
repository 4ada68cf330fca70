"""python -m petl.browser: what makes a built page broken, read from the browser's log and the rendered DOM."""
from __future__ import annotations

import os

import pytest

from petl import browser

LOG = """[1202/045735.842566:ERROR:dbus/bus.cc:405] Failed to connect to the bus: no socket
[1202/045736.584551:INFO:CONSOLE:62] "Uncaught SyntaxError: Identifier 'X' has already been declared", source: file:///b/a.html (62)
[1202/045737.337775:INFO:CONSOLE:1] "[PST]: Changed to auto mode using the light theme.", source: file:///b/t.js (1)
[1202/045737.380580:INFO:CONSOLE(0)] "Failed to load resource: net::ERR_FILE_NOT_FOUND", source: file:///b/_images/x.png (0)
"""


def test_console_errors_and_missing_files_are_problems_and_theme_chatter_is_not():
    found = browser.problems_of("<p>no math</p>", LOG, "<html><body>x</body></html>", "a.html")
    assert found == ["a.html: the browser reports: Uncaught SyntaxError: Identifier 'X' has already been declared "
                     "(file:///b/a.html)",
                     "a.html: the browser reports: Failed to load resource: net::ERR_FILE_NOT_FOUND "
                     "(file:///b/_images/x.png)"]


def test_math_must_be_rendered_without_a_mathjax_error():
    html = '<span class="math notranslate nohighlight">\\(s = \\alpha / r\\)</span>'
    style = "<style>mjx-merror { color: red; }</style>"               # the style sheet names it: not an error
    assert browser.problems_of(html, "", style + "<mjx-container>s</mjx-container>", "p.html") == []
    assert browser.problems_of(html, "", style, "p.html") == ["p.html: its math was not rendered (no MathJax output)"]
    assert browser.problems_of(html, "", "<mjx-container><mjx-merror>x</mjx-merror></mjx-container>", "p.html") == [
        "p.html: MathJax shows an error"]


def test_no_browser_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv(browser.ENV_VAR, str(tmp_path / "nowhere" / "chromium"))
    with pytest.raises(browser.BrowserUnavailable, match="PETL_BROWSER=.*nowhere.*does not exist"):
        browser.find(tmp_path)
    monkeypatch.delenv(browser.ENV_VAR)
    monkeypatch.setattr(browser.shutil, "which", lambda name: None)
    with pytest.raises(browser.BrowserUnavailable, match="no apt-get / dpkg.*set PETL_BROWSER"):
        browser.find(tmp_path)


@pytest.mark.skipif(not (browser.CACHE / "root" / browser.BINARY).exists() and not os.environ.get(browser.ENV_VAR),
                    reason="no browser installed (make book installs it into .browser/)")
def test_a_real_browser_finds_a_broken_page_and_passes_a_whole_one(tmp_path):
    (tmp_path / "good.html").write_text("<html><body><p>fine</p></body></html>")
    (tmp_path / "bad.html").write_text('<html><body><img src="_images/gone.png"><script>const a = 1; const a = 2;'
                                       '</script></body></html>')
    problems = browser.check(tmp_path)
    assert len(problems) == 2 and all(p.startswith("bad.html: ") for p in problems), problems
    assert "bad.html: _images/gone.png is missing" in problems and any("SyntaxError" in p for p in problems)


def test_a_missing_image_script_or_style_sheet_is_found(tmp_path):
    (tmp_path / "_static").mkdir()
    (tmp_path / "_static" / "here.js").write_text("")
    dom = ('<script src="_static/here.js?v=1"></script><script src="_static/gone.js?v=2"></script>'
           '<link rel="stylesheet" href="_static/gone.css"/><img alt="" src="_images/x%20y.png"/>'
           '<a href="missing.html">not a resource</a><img src="https://example.org/remote.png"/>')
    assert browser.missing_files(dom, tmp_path / "page.html") == ["_images/x%20y.png", "_static/gone.css",
                                                                  "_static/gone.js"]
