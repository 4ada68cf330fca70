"""Tokenisation and batching for each (task kind, model family).

:func:`encode` turns a task's DatasetDict into token ids (``Dataset.map``, cached by a fingerprint of
the data, the task, the tokenizer and the lengths). :func:`collator` pads training batches;
:func:`generation_collator` pads generation inputs; :func:`generation_inputs` encodes raw text for
``model.generate``; :func:`decode_generations` turns its output back into strings.

Encoded columns:

=====================  ==========================================================================
classification         ``input_ids``, ``attention_mask`` (``token_type_ids`` if the tokenizer makes
                       them), ``labels``; pairs as the tokenizer joins them (encoders) or
                       ``text\\ntext_pair`` (decoders)
encoder-decoder gen.   ``input_ids`` (source, + T5 prefix), ``attention_mask``, ``labels`` (target
                       ids), ``target`` (reference string)
decoder gen.           ``input_ids`` = prompt + target + EOS, ``attention_mask``, ``labels`` = -100
                       on the prompt (loss on target and EOS only), ``prompt_ids`` (prompt alone,
                       for generation), ``target``
=====================  ==========================================================================

Decoder prompt: the task template (e.g. ``"Article: {source}\\nSummary:"``) with the source cut to fit
``max_source_length`` tokens in all; the target follows after a space. Training batches are padded on
the right (labels -100 on padding); decoder generation batches on the LEFT, so every row continues
from its last real token.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping, Sequence

import datasets
import torch

from petl.tasks import TaskSpec, get_task

__all__ = [
    "IGNORE_INDEX",
    "encode",
    "encode_examples",
    "collator",
    "generation_collator",
    "generation_inputs",
    "decode_generations",
    "Collator",
]

IGNORE_INDEX = -100
ENCODE_VERSION = "1"
FAMILIES = ("encoder", "encoder-decoder", "decoder")


def _check_family(spec: TaskSpec, family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"family={family!r}; valid: {', '.join(FAMILIES)}")
    if spec.kind == "generation" and family == "encoder":
        raise ValueError(f"task {spec.name!r} is generation; an encoder-only model cannot generate "
                         f"(use an encoder-decoder or a decoder)")


def _pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id
    if pad is None:
        raise ValueError("tokenizer has neither a pad nor an eos token; set tokenizer.pad_token first")
    return pad


def _is_t5(tokenizer) -> bool:
    """T5 checkpoints expect a task prefix ("summarize: ..."); recognised by tokenizer class or name."""
    name = str(getattr(tokenizer, "name_or_path", "") or "").rstrip("/").rsplit("/", 1)[-1].lower()
    return type(tokenizer).__name__.startswith("T5") or name.startswith(("t5", "flan-t5", "mt5"))


def _lengths(spec: TaskSpec, max_source_length, max_target_length) -> tuple[int, int]:
    src = max_source_length or spec.max_source_length
    tgt = max_target_length or spec.max_target_length
    if src < 1 or (spec.kind == "generation" and tgt < 1):
        raise ValueError(f"max lengths must be positive, got source={src}, target={tgt}")
    return src, tgt


# ---- decoder-only prompt ----


def _prompt_ids(sources: Sequence[str], spec: TaskSpec, tokenizer, max_source_length: int) -> list[list[int]]:
    """Token ids of the prompt template around each source, the source cut so the whole prompt fits
    max_source_length tokens."""
    head, sep, tail = spec.prompt.partition("{source}")
    if not sep:
        raise ValueError(f"task {spec.name}: prompt template {spec.prompt!r} has no {{source}}")
    lead_space = head.endswith(" ")  # the space goes with the source's first token, as in running text
    head_ids = tokenizer(head.rstrip(" ") if lead_space else head, add_special_tokens=True)["input_ids"]
    if tokenizer.eos_token_id is not None and head_ids and head_ids[-1] == tokenizer.eos_token_id:
        head_ids = head_ids[:-1]  # some tokenizers append EOS as a special token: not inside a prompt
    tail_ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
    budget = max_source_length - len(head_ids) - len(tail_ids)
    if budget < 1:
        raise ValueError(f"max_source_length={max_source_length} leaves no room for the source in the "
                         f"prompt template ({len(head_ids) + len(tail_ids)} tokens)")
    texts = [(" " if lead_space else "") + s.strip() for s in sources]
    src_ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [head_ids + ids[:budget] + tail_ids for ids in src_ids]


def _target_ids(targets: Sequence[str], tokenizer, max_target_length: int) -> list[list[int]]:
    """Target ids after the prompt: ' ' + target, cut to leave room for EOS, then EOS."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("decoder generation needs tokenizer.eos_token_id to end the target")
    ids = tokenizer([" " + t.strip() for t in targets], add_special_tokens=False)["input_ids"]
    return [t[: max_target_length - 1] + [eos] for t in ids]


# ---- per-example encoders (batched: dict of lists in, dict of lists out) ----


def encode_examples(batch: Mapping[str, list], spec: TaskSpec, tokenizer, family: str,
                    max_source_length: int, max_target_length: int) -> dict[str, list]:
    """Encode a batch of raw examples (dict of lists) for one family; see the module table."""
    if spec.kind == "classification":
        texts = batch[spec.text_columns[0]]
        if spec.is_pair and family == "decoder":
            enc = tokenizer([f"{a}\n{b}" for a, b in zip(texts, batch[spec.text_columns[1]])],
                            truncation=True, max_length=max_source_length)
        elif spec.is_pair:
            enc = tokenizer(texts, batch[spec.text_columns[1]], truncation=True, max_length=max_source_length)
        else:
            enc = tokenizer(texts, truncation=True, max_length=max_source_length)
        out = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
        if spec.target_column in batch:
            out["labels"] = list(batch[spec.target_column])
        return out

    sources = batch[spec.text_columns[0]]
    targets = batch.get(spec.target_column)
    if family == "encoder-decoder":
        prefix = spec.t5_prefix if _is_t5(tokenizer) else ""
        enc = tokenizer([prefix + s for s in sources], truncation=True, max_length=max_source_length)
        out = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        if targets is not None:
            out["labels"] = tokenizer(text_target=list(targets), truncation=True,
                                      max_length=max_target_length)["input_ids"]
            out["target"] = list(targets)
        return out

    prompts = _prompt_ids(sources, spec, tokenizer, max_source_length)
    out = {"prompt_ids": prompts}
    if targets is not None:
        tids = _target_ids(targets, tokenizer, max_target_length)
        out["input_ids"] = [p + t for p, t in zip(prompts, tids)]
        out["attention_mask"] = [[1] * (len(p) + len(t)) for p, t in zip(prompts, tids)]
        out["labels"] = [[IGNORE_INDEX] * len(p) + t for p, t in zip(prompts, tids)]
        out["target"] = list(targets)
    return out


def _tokenizer_fingerprint(tokenizer) -> str:
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        state.pop("truncation", None)  # set as a side effect of each call with truncation=True
        state.pop("padding", None)
        h.update(json.dumps(state, sort_keys=True).encode())
    else:
        h.update(repr(sorted(tokenizer.get_vocab().items())).encode())
    h.update(repr((tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id)).encode())
    return h.hexdigest()[:16]


def encode(dataset_dict: datasets.DatasetDict, task_spec, tokenizer, family: str,
           max_source_length: int | None = None, max_target_length: int | None = None,
           num_proc: int | None = None) -> datasets.DatasetDict:
    """Tokenise every split for ``family`` ('encoder' | 'encoder-decoder' | 'decoder').

    Lengths default to the task's. Results are cached by datasets next to the task's arrow files,
    keyed by the data, task, tokenizer, family and lengths.
    """
    spec = get_task(task_spec)
    _check_family(spec, family)
    src, tgt = _lengths(spec, max_source_length, max_target_length)
    if family == "decoder" and spec.kind == "generation":
        _pad_id(tokenizer)
    tok_fp = _tokenizer_fingerprint(tokenizer)
    out = {}
    for split, ds in dataset_dict.items():
        fp = hashlib.sha256(
            f"{ds._fingerprint}|{spec.name}|{family}|{src}|{tgt}|{tok_fp}|{ENCODE_VERSION}".encode()
        ).hexdigest()[:16]
        out[split] = ds.map(
            encode_examples, batched=True, remove_columns=ds.column_names,
            fn_kwargs=dict(spec=spec, tokenizer=tokenizer, family=family,
                           max_source_length=src, max_target_length=tgt),
            new_fingerprint=fp, num_proc=num_proc, desc=f"encode {spec.name}/{split}")
    return datasets.DatasetDict(out)


# ---- collation ----


def _pad(seqs: Sequence[Sequence[int]], value: int, side: str) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    rows = []
    for s in seqs:
        fill = [value] * (width - len(s))
        rows.append(list(s) + fill if side == "right" else fill + list(s))
    return torch.tensor(rows, dtype=torch.long)


class Collator:
    """Pads a list of encoded examples into tensors (a DataLoader ``collate_fn``).

    ``source_key`` is the column holding input ids (``input_ids``, or ``prompt_ids`` for decoder
    generation); ``side`` the padding side; ``with_labels`` whether to return ``labels`` (padded with
    -100 for sequences, stacked for class labels); ``with_references`` whether to return the
    ``target`` strings as ``references`` (a list; pop it before calling the model).
    """

    def __init__(self, pad_token_id: int, *, side: str = "right", source_key: str = "input_ids",
                 with_labels: bool = True, with_references: bool = False):
        if side not in ("left", "right"):
            raise ValueError(f"side={side!r}; valid: 'left', 'right'")
        self.pad_token_id = pad_token_id
        self.side = side
        self.source_key = source_key
        self.with_labels = with_labels
        self.with_references = with_references

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if not features:
            raise ValueError("empty batch")
        ids = [f[self.source_key] for f in features]
        batch: dict[str, Any] = {
            "input_ids": _pad(ids, self.pad_token_id, self.side),
            "attention_mask": _pad([[1] * len(s) for s in ids], 0, self.side),
        }
        if self.source_key == "input_ids" and "token_type_ids" in features[0]:
            batch["token_type_ids"] = _pad([f["token_type_ids"] for f in features], 0, self.side)
        if self.with_labels and "labels" in features[0]:
            labels = [f["labels"] for f in features]
            if isinstance(labels[0], (list, tuple)):
                batch["labels"] = _pad(labels, IGNORE_INDEX, self.side)
            else:
                batch["labels"] = torch.tensor(labels, dtype=torch.long)
        if self.with_references and "target" in features[0]:
            batch["references"] = [f["target"] for f in features]
        return batch


def collator(task_spec, tokenizer, family: str) -> Collator:
    """Training collate_fn: right padding; classification labels stacked, sequence labels padded with -100."""
    spec = get_task(task_spec)
    _check_family(spec, family)
    return Collator(_pad_id(tokenizer), side="right", source_key="input_ids", with_labels=True)


def generation_collator(task_spec, tokenizer, family: str) -> Collator:
    """collate_fn for ``model.generate``: source ids only (decoder: the prompt, LEFT padded), plus the
    reference strings under ``references``."""
    spec = get_task(task_spec)
    _check_family(spec, family)
    if spec.kind != "generation":
        raise ValueError(f"task {spec.name!r} is classification; use collator() and the model's logits")
    if family == "decoder":
        return Collator(_pad_id(tokenizer), side="left", source_key="prompt_ids", with_labels=False,
                        with_references=True)
    return Collator(_pad_id(tokenizer), side="right", source_key="input_ids", with_labels=False,
                    with_references=True)


def generation_inputs(sources: Sequence[str], task_spec, tokenizer, family: str,
                      max_source_length: int | None = None) -> dict[str, torch.Tensor]:
    """Tensors for ``model.generate`` from raw source strings, encoded exactly as in training."""
    spec = get_task(task_spec)
    if isinstance(sources, str):
        sources = [sources]
    src, tgt = _lengths(spec, max_source_length, None)
    enc = encode_examples({spec.text_columns[0]: list(sources)}, spec, tokenizer, family, src, tgt or 1)
    features = [dict(zip(enc, vals)) for vals in zip(*enc.values())]
    batch = generation_collator(spec, tokenizer, family)(features)
    batch.pop("references", None)
    return batch


def decode_generations(output_ids: torch.Tensor, input_ids: torch.Tensor, tokenizer, family: str) -> list[str]:
    """Strings from ``model.generate`` output; a decoder's output starts with its prompt, which is cut."""
    if family == "decoder":
        output_ids = output_ids[:, input_ids.shape[1]:]
    texts = tokenizer.batch_decode(output_ids, skip_special_tokens=True)
    return [t.strip() for t in texts]
