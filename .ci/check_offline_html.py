"""Fail if any page of the built book would load something from the network.

Usage: python .ci/check_offline_html.py book/_build/html

Checks every .html file for scripts, stylesheets, images, frames and media whose address is remote
(http:, https: or protocol-relative //), every .css file for remote url(...) and @import, and that
every local script a page references exists (for instance the vendored MathJax). Plain links a
reader clicks (<a href>) are allowed. An address written inside an inline <script> is reported too,
except the one sphinx-thebe declares: thebe's library is fetched only when a reader presses a
"launch" button, and the book has none (launch_buttons are off).
"""
from __future__ import annotations

import re
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

REMOTE = re.compile(r"^\s*(https?:)?//", re.I)
CSS_REMOTE = re.compile(r"""(url\(\s*['"]?\s*(https?:)?//|@import\s+['"](https?:)?//)""", re.I)
# Attributes through which a browser fetches something while showing the page.
LOADING = {
    "script": ("src",), "img": ("src", "srcset"), "iframe": ("src",), "embed": ("src",),
    "source": ("src", "srcset"), "video": ("src", "poster"), "audio": ("src",), "track": ("src",),
    "object": ("data",), "input": ("src",),
}
# <link rel=...> values that do not load anything.
LINK_NAVIGATION = {"canonical", "next", "prev", "index", "search", "author", "license", "alternate", "help"}
INLINE_URL = re.compile(r"(https?:)?//[\w.-]+\.[a-z]{2,}[^\s\"'`]*", re.I)
INLINE_ALLOWED = re.compile(r'const THEBE_JS_URL = "https://unpkg\.com/thebe@[\w.]+/lib/index\.js";')


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.remote: list[str] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            for m in INLINE_URL.finditer(INLINE_ALLOWED.sub("", data)):
                self.remote.append(f"<script> text {m.group(0)!r}")

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        names = LOADING.get(tag, ())
        if tag == "link" and not (set((a.get("rel") or "").lower().split()) <= LINK_NAVIGATION):
            names = ("href",)
        for name in names:
            value = a.get(name) or ""
            if any(REMOTE.match(part.strip()) for part in value.split(",")):
                self.remote.append(f"<{tag} {name}={value!r}>")
        if tag == "script":
            self._in_script = True
            if a.get("src"):
                self.scripts.append(a["src"])
        style = a.get("style") or ""
        if CSS_REMOTE.search(style):
            self.remote.append(f"<{tag} style={style!r}>")


def check(root: Path) -> list[str]:
    """Return one problem per remote load or missing local script under ``root``."""
    problems = []
    # _static/ holds theme templates (Jinja source), not pages.
    pages = sorted(p for p in root.rglob("*.html") if "_static" not in p.relative_to(root).parts)
    if not pages:
        return [f"no .html files under {root}"]
    for page in pages:
        collector = _Collector()
        collector.feed(page.read_text(encoding="utf-8", errors="replace"))
        problems += [f"{page.relative_to(root)}: remote {item}" for item in collector.remote]
        for src in collector.scripts:
            if REMOTE.match(src):
                continue
            local = (page.parent / unquote(urlsplit(src).path)).resolve()
            if not local.is_file():
                problems.append(f"{page.relative_to(root)}: script {src!r} is missing from the build")
    for css in sorted(root.rglob("*.css")):
        for n, line in enumerate(css.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if CSS_REMOTE.search(line):
                problems.append(f"{css.relative_to(root)}:{n}: remote {CSS_REMOTE.search(line).group(0)}")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    root = Path(argv[0])
    problems = check(root)
    if problems:
        print(f"{len(problems)} network load(s) or missing file(s) in the built book:", file=sys.stderr)
        for p in problems:
            print("  " + p, file=sys.stderr)
        return 1
    print(f"offline check: the pages under {root} load nothing from the network")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
