"""Where a modification Δh can be attached in a stock transformers model.

A *site* is a place in the paper's Figure 1: the head attention of one attention module, the attention sublayer,
the FFN sublayer, or one projection matrix. Each architecture is described once, as attribute paths inside a
layer, so that every method finds its sites the same way and no model code is copied or forked.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

#: How to find the sublayers of one transformer layer, per architecture family.
#: attention: (kind, module path, q, k, v, o); q/k/v/o are paths inside the attention module, or a
#: (fused path, index) pair when q, k and v share one projection (GPT-2's c_attn).
#: ffn: (sublayer input module, sublayer output module, [linear paths]) relative to the layer.
_BERT = dict(
    encoder=("encoder.layer", [("encoder", "attention.self", "query", "key", "value", "attention.output.dense")],
             ("intermediate", "output.dense", ["intermediate.dense", "output.dense"])),
)
_BART_LIKE = dict(
    encoder=("encoder.layers", [("encoder", "self_attn", "q_proj", "k_proj", "v_proj", "out_proj")],
             ("fc1", "fc2", ["fc1", "fc2"])),
    decoder=("decoder.layers", [("decoder", "self_attn", "q_proj", "k_proj", "v_proj", "out_proj"),
                                ("cross", "encoder_attn", "q_proj", "k_proj", "v_proj", "out_proj")],
             ("fc1", "fc2", ["fc1", "fc2"])),
)
_LLAMA_LIKE = dict(
    decoder=("layers", [("decoder", "self_attn", "q_proj", "k_proj", "v_proj", "o_proj")],
             ("mlp", "mlp", ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"])),
)
_GPT2 = dict(
    decoder=("h", [("decoder", "attn", ("c_attn", 0), ("c_attn", 1), ("c_attn", 2), "c_proj")],
             ("mlp", "mlp", ["mlp.c_fc", "mlp.c_proj"])),
)
_T5 = dict(
    encoder=("encoder.block", [("encoder", "layer.0.SelfAttention", "q", "k", "v", "o")],
             ("layer.1.DenseReluDense", "layer.1.DenseReluDense", ["layer.1.DenseReluDense.wi",
                                                                    "layer.1.DenseReluDense.wo"])),
    decoder=("decoder.block", [("decoder", "layer.0.SelfAttention", "q", "k", "v", "o"),
                               ("cross", "layer.1.EncDecAttention", "q", "k", "v", "o")],
             ("layer.2.DenseReluDense", "layer.2.DenseReluDense", ["layer.2.DenseReluDense.wi",
                                                                    "layer.2.DenseReluDense.wo"])),
)

ARCHITECTURES: dict[str, dict] = {
    "bert": _BERT, "roberta": _BERT,
    "bart": _BART_LIKE, "mbart": _BART_LIKE, "marian": _BART_LIKE,
    "llama": _LLAMA_LIKE, "mistral": _LLAMA_LIKE, "qwen2": _LLAMA_LIKE,
    "gpt2": _GPT2,
    "t5": _T5,
}


@dataclass
class Projection:
    """One projection matrix (an nn.Linear, or a slice of a fused GPT-2 Conv1D)."""

    module: nn.Module
    part: int | None = None  # index of q/k/v inside a fused projection
    parts: int = 1


@dataclass
class AttentionSite:
    """One attention module: the head-attention site, its projections and its sublayer."""

    name: str
    kind: str  # 'encoder' | 'decoder' | 'cross' : the paper's three attention types, one prefix group each
    layer: int
    module: nn.Module
    q: Projection
    k: Projection
    v: Projection
    o: Projection
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden: int


@dataclass
class FFNSite:
    """One FFN sublayer: the input to `sublayer_in` is x, the output of `sublayer_out` is FFN(x)."""

    name: str
    kind: str  # 'encoder' | 'decoder'
    layer: int
    sublayer_in: nn.Module
    sublayer_out: nn.Module
    linears: list[nn.Module]
    hidden: int


@dataclass
class Sites:
    architecture: str
    attention: list[AttentionSite] = field(default_factory=list)
    ffn: list[FFNSite] = field(default_factory=list)


def _get(root: nn.Module, path: str) -> nn.Module:
    module = root
    for part in path.split("."):
        module = module[int(part)] if part.isdigit() else getattr(module, part)
    return module


def _projection(attn: nn.Module, spec) -> Projection:
    if isinstance(spec, tuple):
        return Projection(_get(attn, spec[0]), part=spec[1], parts=3)
    return Projection(_get(attn, spec))


def find_sites(model: nn.Module) -> Sites:
    """All sites of a supported stock model; unsupported architectures raise naming the supported ones."""
    config = model.config
    arch = getattr(config, "model_type", None)
    if arch not in ARCHITECTURES:
        raise ValueError(f"petl does not support model_type {arch!r}; supported: {', '.join(sorted(ARCHITECTURES))}")
    base = model.base_model
    sites = Sites(architecture=arch)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "d_model", None) or config.n_embd
    for stack, (layers_path, attentions, (ffn_in, ffn_out, ffn_linears)) in ARCHITECTURES[arch].items():
        layers = _get(base, layers_path)
        for index, layer in enumerate(layers):
            prefix = f"{layers_path}.{index}"
            for kind, attn_path, q, k, v, o in attentions:
                attn = _get(layer, attn_path)
                heads, kv_heads, head_dim = _head_shape(config, attn, hidden)
                sites.attention.append(AttentionSite(
                    name=f"{prefix}.{attn_path}", kind=kind, layer=index, module=attn,
                    q=_projection(attn, q), k=_projection(attn, k), v=_projection(attn, v),
                    o=_projection(layer if "." in o else attn, o), num_heads=heads, num_kv_heads=kv_heads,
                    head_dim=head_dim, hidden=hidden))
            sites.ffn.append(FFNSite(
                name=f"{prefix}.ffn", kind=stack, layer=index, sublayer_in=_get(layer, ffn_in),
                sublayer_out=_get(layer, ffn_out), linears=[_get(layer, p) for p in ffn_linears], hidden=hidden))
    return sites


def _head_shape(config, attn: nn.Module, hidden: int) -> tuple[int, int, int]:
    heads = (getattr(attn, "num_heads", None) or getattr(attn, "num_attention_heads", None)
             or getattr(attn, "n_heads", None) or config.num_attention_heads)
    head_dim = (getattr(attn, "head_dim", None) or getattr(attn, "attention_head_size", None)
                or getattr(attn, "key_value_proj_dim", None) or hidden // heads)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return heads, kv_heads, head_dim
