"""Task metrics, reported on the paper's 0-100 scale.

* ``accuracy``: percent correct (the paper's GLUE numbers).
* ROUGE (``rouge1``, ``rouge2``, ``rougeL``, ``rougeLsum``): F1 x 100 from ``rouge-score`` with the Porter
  stemmer, averaged over examples. ``rougeLsum`` is summary-level LCS over sentences put one a line, as
  in the Hugging Face summarization examples (they split with nltk's punkt model, which needs a
  download; :func:`split_sentences` is a small rule-based splitter that agrees with it on news text).
  The paper's "ROUGE-L" for XSum is ``rougeLsum``. We report the plain mean; the examples' bootstrap
  "mid" estimate equals it up to resampling noise.
* ``bleu``: corpus BLEU from ``sacrebleu`` (13a tokenisation). For WMT16 en-ro the paper scores after
  Romanian post-processing of hypotheses and references (:func:`romanian_postprocess`).
"""

from __future__ import annotations

import re
from typing import Sequence

__all__ = [
    "accuracy",
    "rouge",
    "bleu",
    "split_sentences",
    "romanian_postprocess",
    "compute_metrics",
]

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def _check_lengths(predictions: Sequence, references: Sequence) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if len(predictions) == 0:
        raise ValueError("no predictions to score")


def accuracy(predictions: Sequence[int], references: Sequence[int]) -> float:
    """Percent of predictions equal to their reference label."""
    _check_lengths(predictions, references)
    correct = sum(int(p) == int(r) for p, r in zip(predictions, references))
    return 100.0 * correct / len(references)


# Abbreviations that end in a period without ending a sentence (news text).
_ABBREV = {
    "mr", "mrs", "ms", "dr", "prof", "st", "sr", "jr", "gen", "gov", "sen", "rep", "lt", "col", "sgt",
    "capt", "co", "corp", "inc", "ltd", "vs", "no", "etc", "jan", "feb", "mar", "apr", "jun", "jul", "aug",
    "sep", "sept", "oct", "nov", "dec", "u.s", "u.k", "u.n", "e.g", "i.e", "a.m", "p.m",
}
_BOUNDARY = re.compile(r"[.!?][\"'\u2019\u201d)\]]*\s+(?=[\"'\u2018\u201c(\[]?[A-Z0-9])")


def split_sentences(text: str) -> list[str]:
    """Split text into sentences: at . ! ? (plus closing quotes) followed by space and a capital or
    digit, not after a known abbreviation or a single initial ("J. Smith"). Newlines also split."""
    out = []
    for para in text.split("\n"):
        start = 0
        for m in _BOUNDARY.finditer(para):
            before = para[start:m.start() + 1]
            word = before.rsplit(None, 1)[-1].rstrip(".").lower() if before.strip() else ""
            if word in _ABBREV or (len(word) == 1 and word.isalpha()):
                continue
            out.append(para[start:m.end()].strip())
            start = m.end()
        if para[start:].strip():
            out.append(para[start:].strip())
    return [s for s in out if s]


_SCORERS: dict = {}


def rouge(predictions: Sequence[str], references: Sequence[str], *, stemming: bool = True) -> dict[str, float]:
    """ROUGE-1/2/L/Lsum F1 x 100, mean over examples (sentences newline-split for rougeLsum)."""
    _check_lengths(predictions, references)
    from rouge_score import rouge_scorer

    key = stemming
    if key not in _SCORERS:
        _SCORERS[key] = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=stemming)
    scorer = _SCORERS[key]
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for pred, ref in zip(predictions, references):
        pred_s = "\n".join(split_sentences(pred.strip()))
        ref_s = "\n".join(split_sentences(ref.strip()))
        scores = scorer.score(ref_s, pred_s)  # rouge-score takes (target, prediction)
        for k in ROUGE_TYPES:
            totals[k] += scores[k].fmeasure
    return {k: 100.0 * v / len(predictions) for k, v in totals.items()}


# Romanian post-processing of the WMT16 en-ro evaluation (paper, after Sennrich et al. 2016): Moses-style
# punctuation normalisation, then diacritics removed; both hypotheses and references.
_RO_PUNCT = [
    (re.compile("[\u201e\u201c\u201d\u00ab\u00bb\u2033]"), '"'),  # „ “ ” « » ″ -> "
    (re.compile("[\u2018\u2019\u201a\u2032`\u00b4]"), "'"),  # ‘ ’ ‚ ′ ` ´ -> '
    (re.compile("[\u2013\u2014\u2212]"), "-"),  # en/em dash, minus -> -
    (re.compile("\u2026"), "..."),
    (re.compile("[\u00a0\u2009\u202f]"), " "),  # non-breaking and thin spaces
    (re.compile(r"''"), '"'),
    (re.compile(r" +([,.;:!?%])"), r"\1"),  # no space before punctuation
    (re.compile(r"\s+"), " "),
]
_RO_DIACRITICS = str.maketrans({
    "\u0219": "s", "\u015f": "s", "\u0218": "S", "\u015e": "S",  # ș ş Ș Ş (comma-below and cedilla)
    "\u021b": "t", "\u0163": "t", "\u021a": "T", "\u0162": "T",  # ț ţ Ț Ţ
    "\u0103": "a", "\u0102": "A", "\u00e2": "a", "\u00c2": "A",  # ă Ă â Â
    "\u00ee": "i", "\u00ce": "I",  # î Î
})


def romanian_postprocess(text: str) -> str:
    """Normalise Romanian punctuation (quotes, dashes, spaces), then strip diacritics
    (ș ş ț ţ ă â î -> s s t t a a i, capitals likewise)."""
    for pattern, repl in _RO_PUNCT:
        text = pattern.sub(repl, text)
    return text.translate(_RO_DIACRITICS).strip()


def bleu(predictions: Sequence[str], references: Sequence[str], *, romanian: bool = False) -> float:
    """Corpus BLEU (sacrebleu, one reference each); ``romanian=True`` post-processes both sides first."""
    _check_lengths(predictions, references)
    import sacrebleu

    if romanian:
        predictions = [romanian_postprocess(p) for p in predictions]
        references = [romanian_postprocess(r) for r in references]
    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)


def compute_metrics(task, predictions: Sequence, references: Sequence) -> dict[str, float]:
    """All metrics of a task (a TaskSpec or task name) as {name: value}; includes ``task.primary_metric``.

    Classification: integer label predictions and references. Generation: strings.
    """
    from petl.tasks import get_task

    spec = get_task(task)
    out: dict[str, float] = {}
    wanted = set(spec.metrics)
    if "accuracy" in wanted:
        out["accuracy"] = accuracy(predictions, references)
    if wanted & set(ROUGE_TYPES):
        scores = rouge(predictions, references)
        out.update({k: v for k, v in scores.items() if k in wanted})
    if "bleu" in wanted:
        out["bleu"] = bleu(predictions, references, romanian=spec.romanian_postprocess)
    missing = wanted - set(out)
    if missing:
        raise ValueError(f"task {spec.name}: no implementation for metrics {sorted(missing)}")
    return out
