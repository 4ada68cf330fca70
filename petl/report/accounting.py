"""The paper's parameter-% column against petl's count: every counted row of data/paper/presets.csv, its preset
applied at the paper's sizes to the paper's own model, built from its configuration on the meta device (no
weights). The accounting appendix shows the table; tests/test_paper_presets.py asserts it."""

from __future__ import annotations

import functools

import pandas as pd

from petl.report.paper import SIZES, paper_results, presets, table_name

#: How the paper writes its % column: one decimal, truncated in the BART tables, rounded in the GLUE table.
ROUNDING = {"bart-large": "truncate", "mbart-large-cc25": "truncate", "roberta-base": "round"}
MODEL_NAMES = {"bart-large": "BART-large", "mbart-large-cc25": "mBART-large-cc25", "roberta-base": "RoBERTa-base"}


def build(model: str):
    """The paper's model on the meta device: BART-large (transformers' BartConfig() defaults), mBART-large-cc25,
    or RoBERTa-base with a classification head."""
    import torch
    from transformers import (AutoModelForSeq2SeqLM, AutoModelForSequenceClassification, BartConfig, MBartConfig,
                              RobertaConfig)
    with torch.device("meta"):
        if model == "bart-large":
            return AutoModelForSeq2SeqLM.from_config(BartConfig())
        if model == "mbart-large-cc25":
            return AutoModelForSeq2SeqLM.from_config(MBartConfig(vocab_size=250027))
        if model == "roberta-base":
            return AutoModelForSequenceClassification.from_config(
                RobertaConfig(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1))
    raise ValueError(f"unknown paper model {model!r}; known: {', '.join(ROUNDING)}")


def sizes(row) -> dict:
    """The petl overrides of a presets.csv row: its sizes that are given."""
    return {column: int(row[column]) for column in SIZES if not pd.isna(row[column])}


@functools.lru_cache(maxsize=None)
def count(model: str, variant: str, attn_bn: int | None = None, ffn_bn: int | None = None) -> dict:
    """petl.parameter_report of a preset at some sizes on one of the paper's models."""
    import petl
    overrides = {k: v for k, v in (("attn_bn", attn_bn), ("ffn_bn", ffn_bn)) if v is not None}
    return petl.parameter_report(petl.apply(build(model), variant, **overrides))


def row_count(row) -> dict:
    return count(row["model"], row["variant"], **sizes(row))


def paper_pct(row) -> float:
    """The paper's % parameters of a presets.csv row (results.csv's tuned_params_pct)."""
    found = paper_results(row["table"])
    return float(found[found["method"] == row["paper_method"]]["tuned_params_pct"].iloc[0])


def accounting_table() -> pd.DataFrame:
    """One row per counted configuration (model, preset, sizes): the paper's rows it reproduces with their %, our
    count, our % as the paper writes it, and whether they agree (with the reason where they do not)."""
    from petl.accounting import paper_pct_string
    table = presets()
    table = table[table["counted"]]
    rows = []
    for _, group in table.groupby(["model", "variant", "attn_bn", "ffn_bn"], sort=False, dropna=False):
        first = group.iloc[0]
        report = row_count(first)
        ours = paper_pct_string(report["paper_pct"], ROUNDING[first["model"]])
        papers = [(r, paper_pct(r)) for _, r in group.iterrows()]
        disagree = [(r, pct) for r, pct in papers if float(ours) != pct]
        size_text = ", ".join(f"{k}={v}" for k, v in sizes(first).items())
        rows.append({"model": MODEL_NAMES[first["model"]],
                     "preset": first["variant"] + (f" ({size_text})" if size_text else ""),
                     "paper's rows (% parameters)": "; ".join(
                         f"{table_name(r['table'])}: {r['paper_method']} ({pct:g})" for r, pct in papers),
                     "paper's count": f"{report['paper']:,}", "ours %": f"{report['paper_pct']:.3f}",
                     "ours, as the paper writes it": ours,
                     "agree": "yes" if not disagree else "no: " + "; ".join(
                         f"{table_name(r['table'])}: {r['note'] or 'unexplained'}" for r, _ in disagree),
                     "trains (with prefix MLP)": f"{report['trainable']:,}"})
    return pd.DataFrame(rows)
