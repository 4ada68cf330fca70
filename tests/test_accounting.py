"""The paper's parameter-% column (Appendix B), on the paper's own model configs built on the meta device."""

from __future__ import annotations

import pytest
import torch
from transformers import (AutoModelForSeq2SeqLM, AutoModelForSequenceClassification, BartConfig, MBartConfig,
                          RobertaConfig)

import petl
from petl.accounting import paper_pct_string


def bart_large():
    with torch.device("meta"):  # transformers' BartConfig() defaults are BART-large
        return AutoModelForSeq2SeqLM.from_config(BartConfig())


# (preset, overrides, the paper's % column) for BART-large; the paper truncates to one decimal.
BART_TABLE = [
    ("prefix", {}, "3.6"),                      # Table 6, prefix l=200
    ("mam", {}, "6.7"),                         # Table 6, MAM
    ("prefix_lora_ffn", {}, "6.7"),             # Table 6, prefix l=30 + LoRA ffn r=102
    ("pa_attn_pa_ffn", {}, "6.7"),              # Table 6, PA attn r=30 + PA ffn r=512
    ("pa_ffn", dict(ffn_bn=1024), "12.3"),      # Table 6, PA ffn r=1024
    ("pfeiffer", {}, "7.2"),                    # Table 6, Pfeiffer r=600
    ("sa_attn", dict(attn_bn=512), "9.2"),      # Table 12, SA attn r=512
    ("pa_attn", {}, "3.6"),                     # Table 3, PA attn r=200
    ("sa_ffn", {}, "2.4"),                      # Table 3, SA ffn r=200
    ("lora", {}, "7.2"),                        # Table 12, LoRA attn r=200
    ("lora_ffn", {}, "6.1"),                    # Tables 5 and 12 (Table 6 prints 7.2: the paper disagrees)
    ("scaled_pa", {}, "6.1"),                   # Table 5, scaled PA ffn r=512
    ("prefix", dict(attn_bn=512), "9.2"),       # Table 12, prefix l=512
]


def test_bart_large_backbone_size():
    assert petl.parameter_report(petl.apply(bart_large(), "lora"))["backbone"] == 406_291_456


@pytest.mark.parametrize("variant,overrides,expected", BART_TABLE)
def test_bart_large_percentages_match_the_paper(variant, overrides, expected):
    report = petl.parameter_report(petl.apply(bart_large(), variant, **overrides))
    assert paper_pct_string(report["paper_pct"], "truncate") == expected


def test_mam_exact_counts_and_folded_prefix_mlp():
    report = petl.parameter_report(petl.apply(bart_large(), "mam"))
    assert report["paper"] == 2 * 30 * 1024 * 3 * 12 + 2 * 512 * 1024 * 2 * 12 == 27_377_664
    # Stored: + adapter biases (24 × (512 + 1024)); trainable also holds the three prefix MLPs.
    assert report["stored"] == 27_377_664 + 24 * (512 + 1024)
    mlp = 3 * (30 * 1024 + 1024 * 800 + 800 + 800 * 2 * 12 * 1024 + 2 * 12 * 1024)
    assert report["trainable"] == mlp + 24 * (2 * 512 * 1024 + 512 + 1024)


def test_mbart_large_cc25_mam_share():
    with torch.device("meta"):
        model = AutoModelForSeq2SeqLM.from_config(MBartConfig(vocab_size=250027))
    report = petl.parameter_report(petl.apply(model, "mam"))
    assert report["backbone"] == 610_851_840
    assert round(report["paper_pct"], 2) == 4.48


def test_roberta_base_glue_mam_rounds_to_the_papers_half_percent():
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(
            RobertaConfig(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1))
    report = petl.parameter_report(petl.apply(model, "mam", attn_bn=16, ffn_bn=16))
    assert report["paper"] == 2 * 16 * 768 * 12 * 2
    assert paper_pct_string(report["paper_pct"], "round") == "0.5"
    assert report["head"] == 768 * 768 + 768 + 768 * 2 + 2  # the new classification head trains, not counted
