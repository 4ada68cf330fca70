"""Models: two embedded (offline) checkpoints and any Hugging Face hub name, loaded per task and family.

Families (:func:`model_family`):

* ``encoder`` (BERT, RoBERTa, ...): a classification head on top, classification tasks only;
* ``encoder-decoder`` (BART, mBART, Marian, T5, ...): ``AutoModelForSeq2SeqLM`` for generation
  (beam search), ``AutoModelForSequenceClassification`` where the architecture has one;
* ``decoder`` (Llama, GPT-2, ...): ``AutoModelForCausalLM`` for generation (prompt -> target),
  ``AutoModelForSequenceClassification`` (last-token pooling; a pad token is set) for classification.

The task's generation defaults (paper: XSum beams 6, length 10-60, no-repeat 3-grams; en-ro beams 5,
length 200) are written into ``model.generation_config``, so a plain ``model.generate(**inputs)`` uses
them.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MODELS", "ModelSpec", "ModelUnavailableError", "model_family", "resolve_model", "load_model"]


class ModelUnavailableError(RuntimeError):
    """A hub model cannot be loaded here (offline and not cached)."""


@dataclass(frozen=True)
class ModelSpec:
    """A named model: ``asset`` (embedded, via petl.assets.ensure) or ``hub`` id; its family and use."""

    name: str
    family: str
    description: str
    asset: str | None = None
    hub: str | None = None

    @property
    def is_embedded(self) -> bool:
        return self.asset is not None


MODELS: dict[str, ModelSpec] = {
    s.name: s for s in [
        ModelSpec("minilm", "encoder", "all-MiniLM-L6-v2 (BERT, 6 layers, d=384, 22.7M params); stands in "
                  "for roberta-base", asset="minilm"),
        ModelSpec("smollm2-135m", "decoder", "SmolLM2-135M-Instruct (Llama, 30 layers, d=576, 134.5M params; "
                  "dequantised from a 4-bit GGUF); stands in for BART/mBART on generation", asset="smollm2-135m"),
        ModelSpec("roberta-base", "encoder", "paper: GLUE (MNLI, SST-2)", hub="roberta-base"),
        ModelSpec("facebook/bart-large", "encoder-decoder", "paper: XSum", hub="facebook/bart-large"),
        ModelSpec("facebook/mbart-large-cc25", "encoder-decoder", "paper: WMT16 en-ro",
                  hub="facebook/mbart-large-cc25"),
        ModelSpec("t5-small", "encoder-decoder", "hub example", hub="t5-small"),
        ModelSpec("gpt2", "decoder", "hub example", hub="gpt2"),
    ]
}

# model_type -> family for common types; others are decided by transformers' auto mappings.
_ENCODER_TYPES = {"bert", "roberta", "xlm-roberta", "distilbert", "albert", "electra", "deberta",
                  "deberta-v2", "mpnet", "camembert", "modernbert"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


def model_family(config) -> str:
    """'encoder' | 'encoder-decoder' | 'decoder' for a transformers config; unknown -> ValueError."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    model_type = getattr(config, "model_type", None)
    if getattr(config, "is_encoder_decoder", False):
        return "encoder-decoder"
    if model_type in _ENCODER_TYPES:
        return "encoder"
    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "decoder"
    if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "encoder"
    raise ValueError(f"cannot tell the family of model_type={model_type!r}: not encoder-decoder, not a known "
                     f"encoder type, and transformers has no causal-LM class for it")


def _offline_flag() -> bool:
    return any(os.environ.get(v, "").strip().upper() in ("1", "ON", "YES", "TRUE")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def resolve_model(name: str | os.PathLike, *, hub_timeout: float = 3.0) -> tuple[str, bool]:
    """Where to load ``name`` from: (path or hub id, local_files_only).

    Embedded names come from the asset cache; an existing folder is used as is; a hub id is used from
    the local Hugging Face cache when there, else from the hub if it answers within ``hub_timeout``.
    """
    if isinstance(name, os.PathLike):
        name = os.fspath(name)
    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string, got {name!r}")
    spec = MODELS.get(name)
    if spec is not None and spec.is_embedded:
        from petl import assets

        return str(assets.ensure(spec.asset)), True
    if os.path.isdir(name):
        if not os.path.isfile(os.path.join(name, "config.json")):
            raise ValueError(f"model folder {name!r} has no config.json (not a saved transformers model)")
        return name, True
    hub_id = spec.hub if spec is not None else name
    embedded = ", ".join(n for n, s in MODELS.items() if s.is_embedded)
    close = difflib.get_close_matches(name, list(MODELS), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    if not _HUB_ID.match(hub_id) or hub_id.startswith((".", "/")) or os.sep in hub_id.replace("/", ""):
        raise ValueError(f"unknown model {name!r}{hint}: not an embedded model ({embedded}), not a folder, "
                         f"and not a hub id like 'roberta-base' or 'facebook/bart-large'")
    from transformers import AutoConfig

    try:  # already in the local hub cache?
        AutoConfig.from_pretrained(hub_id, local_files_only=True)
        return hub_id, True
    except Exception:
        pass
    from petl.tasks import hub_reachable

    if _offline_flag() or not hub_reachable(hub_timeout):
        why = "offline mode is set" if _offline_flag() else f"the hub did not answer within {hub_timeout:g} s"
        raise ModelUnavailableError(
            f"model {name!r}{hint} is not in the local Hugging Face cache and {why}. Embedded models that work "
            f"offline: {embedded}; or pass a folder holding a saved model.")
    return hub_id, False


def load_model(name: str | os.PathLike, task_spec, dtype=None, *, hub_timeout: float = 3.0):
    """Load (model, tokenizer) for a task: the right auto class for the model's family and task kind.

    ``task_spec`` is a TaskSpec or task name. ``dtype`` is passed to ``from_pretrained`` (e.g.
    ``torch.bfloat16``; default: the checkpoint's float32 weights). A family that cannot do the task
    (an encoder on a generation task) raises ValueError before any weights are read.
    """
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSeq2SeqLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    from petl.tasks import get_task

    spec = get_task(task_spec)
    where, local_only = resolve_model(name, hub_timeout=hub_timeout)
    with _asset_damage(name, where):
        config = AutoConfig.from_pretrained(where, local_files_only=local_only)
    family = model_family(config)
    if spec.kind == "generation" and family == "encoder":
        raise ValueError(f"model {name!r} is an encoder-only model ({config.model_type}); task {spec.name!r} "
                         f"is generation and needs an encoder-decoder (e.g. facebook/bart-large) or a decoder "
                         f"(e.g. smollm2-135m)")
    with _asset_damage(name, where):
        tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=local_only)
    kwargs = {"local_files_only": local_only}
    if dtype is not None:
        kwargs["dtype"] = dtype

    if spec.kind == "classification":
        from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

        if config.model_type not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
            raise ValueError(f"model {name!r} ({config.model_type}) has no sequence-classification class in "
                             f"transformers; task {spec.name!r} needs one")
        _ensure_pad_token(tokenizer)
        with _asset_damage(name, where):
            model = AutoModelForSequenceClassification.from_pretrained(
                where, num_labels=spec.num_labels,
                id2label=dict(enumerate(spec.label_names)),
                label2id={n: i for i, n in enumerate(spec.label_names)},
                **kwargs)
        model.config.pad_token_id = tokenizer.pad_token_id
    elif family == "encoder-decoder":
        with _asset_damage(name, where):
            model = AutoModelForSeq2SeqLM.from_pretrained(where, **kwargs)
        if spec.source_lang and hasattr(tokenizer, "src_lang"):
            tokenizer.src_lang = spec.source_lang
            tokenizer.tgt_lang = spec.target_lang
    else:
        _ensure_pad_token(tokenizer)
        tokenizer.padding_side = "left"  # batched generation continues from the last real token
        with _asset_damage(name, where):
            model = AutoModelForCausalLM.from_pretrained(where, **kwargs)
        model.config.pad_token_id = tokenizer.pad_token_id

    if spec.kind == "generation":
        _set_generation_defaults(model, tokenizer, spec, family)
    return model, tokenizer


def _asset_of(where: str) -> str | None:
    """The asset whose cache folder ``where`` is (an embedded model, or its folder passed as a path)."""
    from petl import assets

    here = Path(where).resolve()
    for spec in MODELS.values():
        if spec.is_embedded and assets.path(spec.asset).resolve() == here:
            return spec.asset
    return None


@contextlib.contextmanager
def _asset_damage(name, where: str):
    """Turn a failed load of an asset's files into an error naming the damaged file and the fix.

    ``ensure`` checked sizes (and hashes of changed files), but a file can still rot in place, keeping
    its size and mtime; safetensors or tokenizers then fail with their own error, which names neither
    the file nor the asset. On failure every file of the asset is hashed: when one differs from the
    manifest, an ``AssetError`` says which and how to refetch; otherwise the original error stands.
    """
    try:
        yield
    except Exception as exc:
        asset = _asset_of(where)
        if asset is None:
            raise
        from petl import assets

        problem = assets.verify(asset)
        if problem is None:
            raise
        raise assets.AssetError(
            f"model {name!r}: loading asset {asset!r} from {where} failed ({type(exc).__name__}: "
            f"{str(exc)[:200]}) because the asset is damaged: {problem}. Refetch it: "
            f"`python -m petl.assets fetch {asset}`") from exc


def _ensure_pad_token(tokenizer) -> None:
    """Decoder tokenizers often lack a pad token: reuse EOS (or UNK). Padding is always masked out."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        elif tokenizer.unk_token is not None:
            tokenizer.pad_token = tokenizer.unk_token
        else:
            raise ValueError("tokenizer has no pad, eos or unk token to pad with")


def _set_generation_defaults(model, tokenizer, spec, family: str) -> None:
    gc = model.generation_config
    for key, value in spec.generate_kwargs(family).items():
        setattr(gc, key, value)
    gc.pad_token_id = tokenizer.pad_token_id
    if family == "decoder" and tokenizer.eos_token_id is not None:
        gc.eos_token_id = tokenizer.eos_token_id
    if family == "encoder-decoder" and spec.target_lang:
        # mBART must start the target with the language code
        code = tokenizer.convert_tokens_to_ids(spec.target_lang) if spec.target_lang in tokenizer.get_vocab() else None
        if code is not None:
            gc.forced_bos_token_id = code
