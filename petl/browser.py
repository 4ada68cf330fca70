"""Open the built book in a real browser, headless Chromium from Debian's packages, and report broken pages.

    python -m petl.browser book/_build/html      # `make book` runs it; exit 1 on a broken page

A page is broken when the browser reports a JavaScript error, when the rendered page points to a file that is
not there (an image, script or style sheet), or when MathJax shows an error or leaves TeX unrendered. The pages are opened
from disk, as a reader who downloads the built book would, with JavaScript running for a few virtual seconds.

The browser: ``$PETL_BROWSER`` (a chromium / chrome / chrome-headless-shell binary), else Debian's
``chromium-headless-shell`` installed into ``.browser/`` of the repository without root: ``apt-get install
--simulate`` names the packages this machine lacks, ``apt-get download`` fetches them (apt checks each against
its signed package lists) and ``dpkg -x`` unpacks them there; nothing outside ``.browser/`` changes. Its
version is whatever Debian's lists hold (a checker, not an input to any number), and is printed.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".browser"
PACKAGE = "chromium-headless-shell"
BINARY = Path("usr/lib/chromium/chromium-headless-shell")
LIBRARY_DIRS = ("usr/lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu/pulseaudio", "usr/lib/chromium")
ENV_VAR = "PETL_BROWSER"

# Console lines of Chromium's log: [..:INFO:CONSOLE:62] "message", source: file:///... (62)
_CONSOLE = re.compile(r':CONSOLE(?:\(\d+\)|:\d+)\] "(?P<message>.*)", source: (?P<source>\S*)')
# What a page's console may say without being broken (the theme's own chatter).
_HARMLESS = re.compile(r"^\[PST\]|^Got invalid theme mode|^\[togglebutton\]")


class BrowserUnavailable(RuntimeError):
    """No browser could be found or installed."""


@dataclass
class Browser:
    binary: Path
    env: dict
    version: str


def _run(args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, **kw)


def install(cache: Path = CACHE) -> Path:
    """Install Debian's headless Chromium (and the libraries this machine lacks) into ``cache``; return its root."""
    root = cache / "root"
    if (root / BINARY).exists():
        return root
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise BrowserUnavailable(f"no apt-get / dpkg here to install {PACKAGE}: set {ENV_VAR} to a Chromium or "
                                 "Chrome binary")
    plan = _run(["apt-get", "install", "--simulate", "--no-install-recommends", PACKAGE])
    wanted = [f"{m.group(1)}={m.group(2)}" for m in re.finditer(r"^Inst (\S+) (?:\[\S+\] )?\((\S+)", plan.stdout, re.M)]
    if plan.returncode != 0 or not any(w.startswith(PACKAGE + "=") for w in wanted):
        raise BrowserUnavailable(f"apt-get cannot plan {PACKAGE} here ({(plan.stderr or plan.stdout).strip()[-300:]}); "
                                 f"run `apt-get update`, or set {ENV_VAR} to a Chromium or Chrome binary")
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=cache))
    try:
        debs = staging / "debs"
        debs.mkdir()
        got = _run(["apt-get", "download", *wanted], cwd=debs)
        if got.returncode != 0:
            raise BrowserUnavailable(f"apt-get download {' '.join(wanted)} failed: {got.stderr.strip()[-400:]}")
        for deb in sorted(debs.glob("*.deb")):
            unpacked = _run(["dpkg", "-x", str(deb), str(staging / "root")])
            if unpacked.returncode != 0:
                raise BrowserUnavailable(f"dpkg -x {deb.name} failed: {unpacked.stderr.strip()}")
        if not (staging / "root" / BINARY).exists():
            raise BrowserUnavailable(f"{PACKAGE} unpacked without {BINARY}")
        os.replace(staging / "root", root)          # the folder appears whole or not at all
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


def find(cache: Path = CACHE) -> Browser:
    """The browser to use: $PETL_BROWSER, else the one in ``cache`` (installed on first use)."""
    env = dict(os.environ)
    if os.environ.get(ENV_VAR):
        binary = Path(os.environ[ENV_VAR])
        if not binary.exists():
            raise BrowserUnavailable(f"{ENV_VAR}={binary} does not exist")
    else:
        root = install(cache)
        binary = root / BINARY
        libraries = [str(root / d) for d in LIBRARY_DIRS]
        env["LD_LIBRARY_PATH"] = ":".join(libraries + [p for p in [env.get("LD_LIBRARY_PATH")] if p])
    version = _run([str(binary), "--version"], env=env).stdout.strip() or "unknown version"
    return Browser(binary, env, version)


def problems_of(html: str, log: str, dom: str, page: str) -> list[str]:
    """What a reader of ``page`` would see broken, from its source, the browser's log and the DOM after scripts."""
    found = []
    for m in _CONSOLE.finditer(log):
        message = m.group("message")
        if not _HARMLESS.search(message):
            found.append(f"{page}: the browser reports: {message} ({m.group('source')})")
    if "<mjx-merror" in dom or "data-mjx-error=" in dom:        # (the style sheet names mjx-merror too)
        found.append(f"{page}: MathJax shows an error")
    has_math = 'class="math' in html or "\\(" in html or "\\[" in html
    if has_math and "<mjx-container" not in dom:
        found.append(f"{page}: its math was not rendered (no MathJax output)")
    return found


_LOCAL_REF = re.compile(r'<(?:img|script|link|source)\b[^>]*?\b(?:src|href)="(?P<url>(?![A-Za-z][A-Za-z0-9+.-]*:)[^"#?]+)[^"]*"', re.I)


def missing_files(dom: str, page: Path) -> list[str]:
    """Files an image, script, style sheet or media tag of the rendered page points to that are not on disk."""
    from urllib.parse import unquote
    return sorted({m.group("url") for m in _LOCAL_REF.finditer(dom)
                   if not (page.parent / unquote(m.group("url"))).exists()})


def open_page(browser: Browser, page: Path, budget_ms: int = 8000) -> tuple[str, str]:
    """(DOM after the scripts ran, the browser's log) of one page opened from disk."""
    with tempfile.TemporaryDirectory() as profile:
        done = _run([str(browser.binary), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                     f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
                     f"--virtual-time-budget={budget_ms}", "--dump-dom", page.resolve().as_uri()],
                    env=browser.env, timeout=120)
    return done.stdout, done.stderr


def check(build_dir: Path, browser: Browser | None = None) -> list[str]:
    """Open every page of the built book; return the problems found (empty: every page is whole)."""
    browser = browser or find()
    pages = [p for p in sorted(build_dir.glob("*.html")) if p.name not in ("genindex.html", "search.html")]
    if not pages:
        return [f"{build_dir}: no built page (run `jupyter-book build book` first)"]
    problems = []
    for page in pages:
        dom, log = open_page(browser, page)
        if not dom.strip():
            problems.append(f"{page.name}: the browser rendered nothing ({log.strip()[-300:]})")
            continue
        problems += problems_of(page.read_text(errors="replace"), log, dom, page.name)
        problems += [f"{page.name}: {url} is missing" for url in missing_files(dom, page)]
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m petl.browser", description=__doc__.split("\n")[0])
    parser.add_argument("build_dir", type=Path)
    args = parser.parse_args(argv)
    try:
        browser = find()
    except BrowserUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    problems = check(args.build_dir, browser)
    pages = len([p for p in args.build_dir.glob("*.html") if p.name not in ("genindex.html", "search.html")])
    print(f"{browser.version}: opened {pages} pages of {args.build_dir}")
    print("\n".join(problems) if problems else "no broken page")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
