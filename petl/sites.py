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
#: ffn: an _FFN of paths relative to the layer (see FFNSite for what each one is).


def _ffn(residual, last, linears, sum_at, output=None):
    return dict(residual=residual, last=last, linears=linears, sum_at=sum_at, output=output)


_BERT = dict(
    encoder=("encoder.layer", [("encoder", "attention.self", "query", "key", "value", "attention.output.dense")],
             _ffn("intermediate", "output.dense", ["intermediate.dense", "output.dense"],
                  ("input", "output.LayerNorm"), output="output.dropout")),
)
_BART_FFN = _ffn("fc1", "fc2", ["fc1", "fc2"], ("input", "final_layer_norm"))  # post-norm, functional dropout
_MBART_FFN = _ffn("final_layer_norm", "fc2", ["fc1", "fc2"], ("output", ""))  # pre-norm, functional dropout


def _seq2seq(ffn):
    return dict(
        encoder=("encoder.layers", [("encoder", "self_attn", "q_proj", "k_proj", "v_proj", "out_proj")], ffn),
        decoder=("decoder.layers", [("decoder", "self_attn", "q_proj", "k_proj", "v_proj", "out_proj"),
                                    ("cross", "encoder_attn", "q_proj", "k_proj", "v_proj", "out_proj")], ffn),
    )


_LLAMA_LIKE = dict(
    decoder=("layers", [("decoder", "self_attn", "q_proj", "k_proj", "v_proj", "o_proj")],
             _ffn("post_attention_layernorm", "mlp.down_proj", ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"],
                  ("output", ""), output="mlp")),
)
_GPT2 = dict(
    decoder=("h", [("decoder", "attn", ("c_attn", 0), ("c_attn", 1), ("c_attn", 2), "c_proj")],
             _ffn("ln_2", "mlp.c_proj", ["mlp.c_fc", "mlp.c_proj"], ("output", ""), output="mlp")),
)


def _t5_ffn(index):
    return _ffn(f"layer.{index}.layer_norm", f"layer.{index}.DenseReluDense.wo",
                [f"layer.{index}.DenseReluDense.wi", f"layer.{index}.DenseReluDense.wo"],
                ("output", f"layer.{index}"), output=f"layer.{index}.dropout")


_T5 = dict(
    encoder=("encoder.block", [("encoder", "layer.0.SelfAttention", "q", "k", "v", "o")], _t5_ffn(1)),
    decoder=("decoder.block", [("decoder", "layer.0.SelfAttention", "q", "k", "v", "o"),
                               ("cross", "layer.1.EncDecAttention", "q", "k", "v", "o")], _t5_ffn(2)),
)

#: (hidden dropout, attention-probability dropout) config fields per family; a missing field means 0.
_DROPOUT = {"bert": ("hidden_dropout_prob", "attention_probs_dropout_prob"), "t5": ("dropout_rate", "dropout_rate"),
            "gpt2": ("resid_pdrop", "attn_pdrop"), "llama": (None, "attention_dropout"),
            "bart": ("dropout", "attention_dropout")}
#: Where an architecture's absolute position embedding sits (prompt tuning gives the prompt no position).
POSITIONS = {"bert": "embeddings.position_embeddings", "roberta": "embeddings.position_embeddings",
             "bart": "encoder.embed_positions", "mbart": "encoder.embed_positions",
             "marian": "encoder.embed_positions", "gpt2": "wpe"}

ARCHITECTURES: dict[str, dict] = {
    "bert": _BERT, "roberta": _BERT,
    "bart": _seq2seq(_BART_FFN), "mbart": _seq2seq(_MBART_FFN), "marian": _seq2seq(_BART_FFN),
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
    dropout: float  # the model's attention-probability dropout (the reference's adapters at attention use it)


@dataclass
class FFNSite:
    """One FFN sublayer and the points around it where a Δh can be read or added.

    residual: the module whose input is the residual stream x entering the FFN block (the FFN's input in post-norm
        layers, the pre-FFN LayerNorm's input in pre-norm ones): the parallel adapter reads x here.
    last: the FFN's last linear (its output is FFN(x) before the block's dropout).
    output: the module whose output is FFN(x) after the block's dropout, or None where that dropout is functional
        (BART, mBART, Marian); the sequential adapter reads and changes that output, as the reference does.
    sum_at: ('input', module) if the residual sum y = x + dropout(FFN(x)) is that module's input (a post-norm
        LayerNorm), ('output', module) if it is that module's output (a pre-norm layer).
    """

    name: str
    kind: str  # 'encoder' | 'decoder'
    layer: int
    layer_module: nn.Module
    residual: nn.Module
    last: nn.Module
    output: nn.Module | None
    sum_at: tuple[str, nn.Module]
    linears: list[nn.Module]
    hidden: int
    dropout: float  # the model's hidden dropout, applied to FFN(x) and inside the reference's FFN adapters

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
    hidden_dropout, attention_dropout = _dropout(config)
    for stack, (layers_path, attentions, ffn) in ARCHITECTURES[arch].items():
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
                    head_dim=head_dim, hidden=hidden, dropout=attention_dropout))
            where, path = ffn["sum_at"]
            sites.ffn.append(FFNSite(
                name=f"{prefix}.ffn", kind=stack, layer=index, layer_module=layer,
                residual=_get(layer, ffn["residual"]), last=_get(layer, ffn["last"]),
                output=_get(layer, ffn["output"]) if ffn["output"] else None,
                sum_at=(where, _get(layer, path) if path else layer),
                linears=[_get(layer, p) for p in ffn["linears"]], hidden=hidden, dropout=hidden_dropout))
    return sites


def position_embedding(model: nn.Module) -> nn.Module | None:
    """The module that adds absolute positions to the (first stack's) input, or None for relative positions."""
    path = POSITIONS.get(model.config.model_type)
    return _get(model.base_model, path) if path else None


def _dropout(config) -> tuple[float, float]:
    family = {"roberta": "bert", "mbart": "bart", "marian": "bart", "mistral": "llama", "qwen2": "llama"}.get(
        config.model_type, config.model_type)
    return tuple(float(getattr(config, name, 0.0) or 0.0) if name else 0.0 for name in _DROPOUT[family])


def _head_shape(config, attn: nn.Module, hidden: int) -> tuple[int, int, int]:
    heads = (getattr(attn, "num_heads", None) or getattr(attn, "num_attention_heads", None)
             or getattr(attn, "n_heads", None) or config.num_attention_heads)
    head_dim = (getattr(attn, "head_dim", None) or getattr(attn, "attention_head_size", None)
                or getattr(attn, "key_value_proj_dim", None) or hidden // heads)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return heads, kv_heads, head_dim
