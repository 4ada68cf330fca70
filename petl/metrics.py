"""Task metrics, reported on the paper's 0-100 scale.

* ``accuracy``: percent correct (the paper's GLUE numbers).
* ROUGE (``rouge1``, ``rouge2``, ``rougeL``, ``rougeLsum``): F1 x 100 from ``rouge-score`` with the Porter
  stemmer, averaged over examples. ``rougeLsum`` is summary-level LCS over sentences put one a line, as
  in the Hugging Face summarization examples (they split with nltk's punkt model, which needs a
  download; :func:`split_sentences` is a small rule-based splitter that agrees with it on news text).
  The paper's "ROUGE-L" for XSum is ``rougeLsum``. We report the plain mean; the examples' bootstrap
  "mid" estimate equals it up to resampling noise.
* ``bleu``: corpus BLEU from ``sacrebleu``. The en-ro tasks are scored as the reference scores WMT16 en-ro
  (its ``exps/romanian_postprocess.sh``): Romanian post-processing and Moses tokenisation of hypotheses
  and references (:func:`romanian_tokenize`), then sacrebleu without tokenisation or smoothing.
* ``chrf``: corpus chrF from ``sacrebleu``, on the post-processed text for the en-ro tasks.
"""

from __future__ import annotations

import re
from typing import Sequence

__all__ = [
    "accuracy",
    "rouge",
    "bleu",
    "chrf",
    "split_sentences",
    "romanian_postprocess",
    "romanian_tokenize",
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


# The reference scores en-ro with exps/romanian_postprocess.sh: on hypotheses and references alike, Moses'
# replace-unicode-punctuation, normalize-punctuation -l ro and remove-non-printing-char, then WMT16's
# normalise-romanian (cedilla s/t -> comma-below) and remove-diacritics, then Moses' tokenizer -no-escape -l ro,
# and `sacrebleu -tok none -s none`. sacremoses is the Python port of the Moses scripts.
_RO_CEDILLA = str.maketrans({"\u015e": "\u0218", "\u015f": "\u0219", "\u0162": "\u021a", "\u0163": "\u021b"})
_RO_DIACRITICS = str.maketrans({
    "\u0218": "S", "\u0219": "s", "\u021a": "T", "\u021b": "t",  # Ș ș Ț ț (comma below)
    "\u0102": "A", "\u0103": "a", "\u00c2": "A", "\u00e2": "a", "\u00ce": "I", "\u00ee": "i",  # Ă ă Â â Î î
})
_MOSES: dict = {}


def _moses():
    if not _MOSES:
        from sacremoses import MosesPunctNormalizer, MosesTokenizer

        _MOSES["normalizer"] = MosesPunctNormalizer(lang="ro", pre_replace_unicode_punct=True,
                                                    post_remove_control_chars=True)
        _MOSES["tokenizer"] = MosesTokenizer(lang="ro")
    return _MOSES["normalizer"], _MOSES["tokenizer"]


def romanian_postprocess(text: str) -> str:
    """The reference's Romanian post-processing before tokenisation: Moses punctuation normalisation
    (unicode quotes, dashes and ellipses to ASCII, spacing, control characters removed), cedilla ş ţ made
    comma-below ș ț, then the diacritics removed (ș ț ă â î -> s t a a i, capitals likewise)."""
    normalizer, _ = _moses()
    return normalizer.normalize(text).translate(_RO_CEDILLA).translate(_RO_DIACRITICS).strip()


def romanian_tokenize(text: str) -> str:
    """:func:`romanian_postprocess`, then Moses' tokenizer for Romanian without escaping: what the
    reference feeds to ``sacrebleu -tok none``."""
    _, tokenizer = _moses()
    return tokenizer.tokenize(romanian_postprocess(text), escape=False, return_str=True)


def bleu(predictions: Sequence[str], references: Sequence[str], *, romanian: bool = False) -> float:
    """Corpus BLEU (sacrebleu, one reference each).

    ``romanian=True`` is the reference's en-ro score: both sides through :func:`romanian_tokenize`, then
    sacrebleu with no tokenisation and no smoothing (``-tok none -s none``). Otherwise sacrebleu's defaults
    (13a tokenisation, exponential smoothing).
    """
    _check_lengths(predictions, references)
    import sacrebleu

    if romanian:
        hyps = [romanian_tokenize(p) for p in predictions]
        refs = [romanian_tokenize(r) for r in references]
        # force: the text is tokenised on purpose (sacrebleu would warn about it; the score is the same)
        return float(sacrebleu.corpus_bleu(hyps, [refs], tokenize="none", smooth_method="none", force=True).score)
    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)


def chrf(predictions: Sequence[str], references: Sequence[str], *, romanian: bool = False) -> float:
    """Corpus chrF (sacrebleu's defaults: character 6-grams, beta 2); ``romanian=True`` scores the text
    after :func:`romanian_postprocess`, as BLEU (chrF needs no tokenisation)."""
    _check_lengths(predictions, references)
    import sacrebleu

    if romanian:
        predictions = [romanian_postprocess(p) for p in predictions]
        references = [romanian_postprocess(r) for r in references]
    return float(sacrebleu.corpus_chrf(list(predictions), [list(references)]).score)


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
    if "chrf" in wanted:
        out["chrf"] = chrf(predictions, references, romanian=spec.romanian_postprocess)
    missing = wanted - set(out)
    if missing:
        raise ValueError(f"task {spec.name}: no implementation for metrics {sorted(missing)}")
    return out
