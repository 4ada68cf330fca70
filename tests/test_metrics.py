"""Metrics against values worked out by hand."""

import math

import pytest

from petl import metrics


def test_accuracy_is_percent():
    assert metrics.accuracy([0, 1, 1], [0, 1, 0]) == pytest.approx(200 / 3)
    with pytest.raises(ValueError, match="2 predictions but 3 references"):
        metrics.accuracy([0, 1], [0, 1, 1])
    with pytest.raises(ValueError, match="no predictions"):
        metrics.accuracy([], [])


def test_rouge_hand_counted():
    # pred: the cat sat on the mat / ref: the cat is on the mat
    # unigrams: 5 of 6 match (the x2, cat, on, mat) -> F1 = 5/6; bigrams: the-cat, on-the, the-mat = 3 of 5
    # LCS "the cat on the mat" = 5 -> 5/6
    s = metrics.rouge(["the cat sat on the mat"], ["the cat is on the mat"])
    assert s["rouge1"] == pytest.approx(500 / 6)
    assert s["rouge2"] == pytest.approx(60.0)
    assert s["rougeL"] == pytest.approx(500 / 6)
    assert s["rougeLsum"] == pytest.approx(500 / 6)


def test_rouge_stemming():
    # Porter stems: cats -> cat, running/runs -> run
    assert metrics.rouge(["cats running"], ["cat runs"])["rouge1"] == pytest.approx(100.0)
    assert metrics.rouge(["cats running"], ["cat runs"], stemming=False)["rouge1"] == 0.0


def test_rougelsum_splits_sentences_onto_lines():
    # Two sentences in swapped order: plain LCS matches only one sentence (3 of 6 words), the
    # summary-level LCS over newline-separated sentences matches both.
    pred, ref = "Dogs ran fast today. Cats sat down there.", "Cats sat down there. Dogs ran fast today."
    s = metrics.rouge([pred], [ref])
    assert s["rougeL"] == pytest.approx(50.0)
    assert s["rougeLsum"] == pytest.approx(100.0)


def test_rouge_is_mean_over_examples():
    s = metrics.rouge(["the cat", "dogs bark"], ["the cat", "birds sing"])
    assert s["rouge1"] == pytest.approx(50.0)


def test_split_sentences_keeps_abbreviations_and_initials():
    text = 'Mr. Smith went to Washington. He saw the U.S. Capitol! "Then he left." J. K. Rowling wrote 3 books.'
    assert metrics.split_sentences(text) == [
        "Mr. Smith went to Washington.", "He saw the U.S. Capitol!", '"Then he left."',
        "J. K. Rowling wrote 3 books."]
    assert metrics.split_sentences("one line\nsecond line") == ["one line", "second line"]


def test_bleu_hand_computed():
    # 1-4 gram precisions 3/4, 2/3, 1/2, 0/1; sacrebleu's default 'exp' smoothing turns the zero 4-gram
    # count into 1/(2*1); equal lengths -> no brevity penalty. BLEU = (3/4*2/3*1/2*1/2)^(1/4) = 0.125^0.25
    assert metrics.bleu(["a b c d"], ["a b c e"]) == pytest.approx(100 * 0.125 ** 0.25)
    assert metrics.bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100.0)


def test_romanian_postprocess():
    ro = metrics.romanian_postprocess
    assert ro("Ştiinţa și ţara ȘI Țara ă â î Ă Â Î") == "Stiinta si tara SI Tara a a i A A I"
    # Moses' punctuation normaliser: Romanian quotes, dashes and the ellipsis to ASCII
    assert ro("„Bine” — spuse el…") == '"Bine" - spuse el...'


def test_bleu_romanian_removes_diacritic_variants():
    hyp = ["Ştiinţa şi ţara sunt aici acum ."]  # cedilla forms
    ref = ["Știința și țara sunt aici acum ."]  # comma-below forms
    plain = metrics.bleu(hyp, ref)
    assert plain < 50
    assert metrics.bleu(hyp, ref, romanian=True) == pytest.approx(100.0)


def test_compute_metrics_per_task():
    assert metrics.compute_metrics("rt-polarity", [1, 0], [1, 1]) == {"accuracy": 50.0}
    out = metrics.compute_metrics("bbc-xsum", ["the cat sat"], ["the cat sat"])
    assert set(out) == {"rouge1", "rouge2", "rougeL", "rougeLsum"}
    assert all(math.isclose(v, 100.0) for v in out.values())
    hyp, ref = ["Ştiinţa şi ţara sunt aici acum ."], ["Știința și țara sunt aici acum ."]
    assert metrics.compute_metrics("wmt16-en-ro", hyp, ref)["bleu"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        metrics.compute_metrics("nope", [1], [1])
