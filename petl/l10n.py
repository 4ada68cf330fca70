"""English→Romanian message pairs from gettext catalogues: the data of the ``en-ro-l10n`` task.

Free software ships the translations of its program messages as gettext catalogues, compiled to ``.mo``
files: each English message (``msgid``) with its Romanian translation (``msgstr``), written by the Romanian
translation teams. The twelve Debian packages pinned in :mod:`petl.assets` (group ``ro-l10n``) carry 18
such catalogues, 15,093 translated messages. This module reads them and keeps the pairs that are real
translated text:

1. **read** every message of each catalogue (:func:`read_mo`); the ``msgctxt`` is dropped; a plural
   message gives its singular pair (``msgid`` with ``msgstr[0]``, Romanian's singular form);
2. **normalise** both sides the same way (:func:`normalise`): GTK mnemonic underscores removed in the
   GTK catalogue (``_Open`` → ``Open``, ``Des_chide`` → ``Deschide``), markup tags removed (``<b>``,
   ``<i>``, ``<span ...>``; ``<file>``-style argument names and ``<http://...>`` stay, they are text),
   whitespace collapsed (help texts lose their column layout). Format placeholders (``%s``, ``%2$d``,
   ``%(name)s``, ``{name}``, ``$VAR``) stay as they are: a translation must carry them over;
3. **drop** (:func:`drop_reason`): untranslated messages (target = source, case-folded), sources of
   fewer than 3 words (:func:`count_words`: labels such as ``Open File`` or ``%s: cannot assign``)
   or more than 40 words (whole help pages),
   pairs whose placeholders differ (as a multiset, positions ignored), and pairs whose character lengths
   differ more than 3-fold; no catalogue of names (ISO countries, languages, currencies, keyboard layouts)
   is read at all;
4. **deduplicate** by source (NFKC, case-folded, whitespace collapsed): a message in several catalogues
   (gnulib's are in many) is kept once, with its commonest translation (ties: the first catalogue);
5. **split** by *skeleton* (the source without placeholders, digits and punctuation, :func:`skeleton`),
   so that variants such as ``cannot open %s`` and ``cannot open '%s'`` land in the same split:
   the skeleton groups are shuffled with seed 0 and fill test (1,000 pairs), then validation (500),
   the rest is train.

The domain is software localisation (error messages, option help, settings descriptions), not news as
WMT16; numbers on this task are not comparable with the paper's en-ro numbers.
"""

from __future__ import annotations

import random
import re
import struct
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

__all__ = ["Message", "Pair", "read_mo", "normalise", "drop_reason", "placeholders", "skeleton", "collect",
           "split", "count_words", "MIN_WORDS", "MAX_WORDS", "MAX_LENGTH_RATIO", "MNEMONIC_CATALOGUES"]

MIN_WORDS = 3
MAX_WORDS = 40
MAX_LENGTH_RATIO = 3.0
#: Catalogues whose messages mark keyboard mnemonics with an underscore.
MNEMONIC_CATALOGUES = frozenset({"gtk20"})


@dataclass(frozen=True)
class Message:
    """One translated message of a catalogue: ``msgstr`` holds one form, or one per plural form."""

    context: str | None
    msgid: str
    msgid_plural: str | None
    msgstr: tuple[str, ...]


@dataclass(frozen=True)
class Pair:
    """A cleaned English→Romanian pair and where it came from (``catalogue`` = gettext domain)."""

    source: str
    target: str
    package: str
    catalogue: str
    index: int  # position of the message in its catalogue


# ---- reading ----------------------------------------------------------------------------------------

_MAGIC = 0x950412DE


def read_mo(data: bytes) -> list[Message]:
    """The messages of a compiled gettext catalogue (the GNU ``.mo`` format), header excluded.

    The format: a magic number (its byte order gives the file's), a revision, the message count N, and
    the offsets of two tables of N (length, offset) pairs: the original strings and their translations.
    An original is ``[msgctxt \\x04] msgid [\\x00 msgid_plural]``; a translation the plural forms joined
    by ``\\x00``. Strings are decoded with the charset the header (the empty msgid) names.
    """
    if len(data) < 20:
        raise ValueError(f"not a .mo catalogue: {len(data)} bytes")
    for order in "<>":
        if struct.unpack(order + "I", data[:4])[0] == _MAGIC:
            break
    else:
        raise ValueError(f"not a .mo catalogue: magic number {data[:4].hex()}")
    _, count, originals, translations = struct.unpack(order + "4I", data[4:20])

    def string(table: int, i: int) -> bytes:
        length, offset = struct.unpack(order + "2I", data[table + 8 * i: table + 8 * i + 8])
        if offset + length > len(data):
            raise ValueError(f"not a .mo catalogue: string {i} runs past the end")
        return data[offset: offset + length]

    raw = [(string(originals, i), string(translations, i)) for i in range(count)]
    header = dict(raw).get(b"", b"").decode("ascii", "replace")
    match = re.search(r"charset=([\w-]+)", header)
    charset = match.group(1) if match else "utf-8"
    out = []
    for key, value in raw:
        if not key:
            continue
        context, _, msgid = key.decode(charset).rpartition("\x04")
        msgid, _, plural = msgid.partition("\x00")
        out.append(Message(context or None, msgid, plural or None, tuple(value.decode(charset).split("\x00"))))
    return out


# ---- cleaning ---------------------------------------------------------------------------------------

_PLACEHOLDER = re.compile(
    r"%(?:\d+\$)?[-+ #0']*(?:\d+|\*)?(?:\.(?:\d+|\*))?(?:hh|h|ll|l|L|q|j|z|t)?[diouxXeEfFgGaAcspnm%]"  # printf
    r"|%\([A-Za-z_]\w*\)[sdr]"  # python %(name)s
    r"|\{[A-Za-z0-9_]*\}"  # {name}, {0}, {}
    r"|\$\{?[A-Za-z_]\w*\}?"  # $VAR, ${VAR}
)
_POSITION = re.compile(r"(?<=%)\d+\$")
_MARKUP = re.compile(r"</?(?:b|i|u|s|tt|big|small|sub|sup|span|a|br|markup)(?:\s[^<>]*)?/?>", re.I)
_MNEMONIC = re.compile(r"(?<![\w_])_(?=[^\W\d_])|(?<=[^\W\d_])_(?=[^\W\d_])")


def normalise(text: str, catalogue: str) -> str:
    """The same treatment for a source and its target: mnemonics (GTK catalogues), markup, whitespace."""
    if catalogue in MNEMONIC_CATALOGUES and text.count("_") == 1:
        text = _MNEMONIC.sub("", text)
    text = _MARKUP.sub("", text)
    return " ".join(text.split())


def placeholders(text: str) -> list[str]:
    """The format placeholders of a message, sorted, positions dropped (``%2$s`` counts as ``%s``)."""
    return sorted(_POSITION.sub("", p) for p in _PLACEHOLDER.findall(text))


def count_words(text: str) -> int:
    """Words of a message: whitespace-separated tokens with a letter once placeholders are removed
    (``%s: cannot assign`` has two)."""
    return sum(1 for token in _PLACEHOLDER.sub(" ", text).split() if re.search(r"[^\W\d_]", token))


def drop_reason(source: str, target: str) -> str | None:
    """Why a normalised pair is not kept, or None to keep it."""
    if not target:
        return "untranslated"
    if source.casefold() == target.casefold():
        return "untranslated"
    words = count_words(source)
    if words < MIN_WORDS:
        return f"fewer than {MIN_WORDS} words"
    if words > MAX_WORDS:
        return f"more than {MAX_WORDS} words"
    if placeholders(source) != placeholders(target):
        return "placeholders differ"
    ratio = len(target) / len(source)
    if not 1 / MAX_LENGTH_RATIO <= ratio <= MAX_LENGTH_RATIO:
        return "lengths differ more than 3-fold"
    return None


def source_key(text: str) -> str:
    """Key for deduplication: NFKC, case-folded, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def skeleton(text: str) -> str:
    """The source with placeholders, digits and punctuation removed: near-identical messages share it."""
    return " ".join(re.sub(r"[\W\d_]+", " ", _PLACEHOLDER.sub(" ", source_key(text))).split())


def collect(catalogues: Iterable[tuple[str, str, Path]]) -> tuple[list[Pair], Counter]:
    """Read, normalise, filter and deduplicate the pairs of ``(package, catalogue, .mo path)`` triples.

    Returns the pairs (in catalogue order) and a count of what was dropped and why, ``messages`` being
    the number read.
    """
    dropped: Counter = Counter()
    by_source: dict[str, list[Pair]] = defaultdict(list)
    for package, catalogue, path in catalogues:
        for index, message in enumerate(read_mo(Path(path).read_bytes())):
            dropped["messages"] += 1
            source = normalise(message.msgid, catalogue)
            target = normalise(message.msgstr[0], catalogue)
            why = drop_reason(source, target)
            if why:
                dropped[why] += 1
                continue
            by_source[source_key(source)].append(Pair(source, target, package, catalogue, index))
    pairs = []
    for versions in by_source.values():
        counts = Counter(p.target for p in versions)
        best = max(counts.values())
        pairs.append(next(p for p in versions if counts[p.target] == best))
        dropped["duplicate source"] += len(versions) - 1
    return pairs, dropped


def split(pairs: Sequence[Pair], sizes: Mapping[str, int], seed: int = 0) -> dict[str, list[Pair]]:
    """Disjoint splits by skeleton: groups shuffled with ``seed`` fill each sized split in turn (a group
    that would overflow it waits for the next); ``train`` takes every pair left."""
    groups: dict[str, list[Pair]] = defaultdict(list)
    for p in pairs:
        groups[skeleton(p.source)].append(p)
    order = sorted(groups)
    random.Random(seed).shuffle(order)
    out: dict[str, list[Pair]] = {name: [] for name in sizes}
    rest = []
    for key in order:
        group = groups[key]
        home = next((n for n, size in sizes.items() if len(out[n]) + len(group) <= size), None)
        (out[home] if home else rest).extend(group)
    for name, size in sizes.items():
        if len(out[name]) != size:
            raise ValueError(f"split {name!r}: {len(out[name])} pairs, {size} wanted ({len(pairs)} pairs in all)")
    out["train"] = rest
    return out
