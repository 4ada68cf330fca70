"""Prefix tuning (Li & Liang, 2021) and its relatives, at the head-attention site.

Eq. 7 of the paper: with l prefix vectors P_k, P_v prepended to the keys and values of one head,

    head = Attn(x W_q, concat(P_k, C W_k), concat(P_v, C W_v))
         = (1 - λ(x)) · Attn(x W_q, C W_k, C W_v) + λ(x) · softmax(x W_q P_kᵀ) P_v
    λ(x) = Σ_i exp(x W_q P_kᵀ)_i / (Σ_i exp(x W_q P_kᵀ)_i + Σ_j exp(x W_q W_kᵀ Cᵀ)_j)

attn_option picks the form (reference option names):
    concat           the left side: prefix tuning itself
    cross_attn_noln  the right side's two terms computed separately; composed by 'gate_add' (λ above) or 'add'
    cross_attn       as cross_attn_noln, the prefix query W_q · LayerNorm(h) from the attention's input h (one
                     LayerNorm over d_model per attention module), scaled, as the reference computes it
    cross_attn_relu  ReLU(q P_kᵀ) P_v added per head: the multi-head parallel adapter (Table 1); q is
                     W_q · LayerNorm(h) unscaled (the reference's BART) or the attention's own scaled query (its
                     mBART and RoBERTa): PETLConfig.mh_adapter_query

'gate_add' on every architecture is what the reference's BART computes, with λ from the scaled logits. The
reference's RoBERTa cannot run it (it reads the key length from the head axis, a shape error) and, past that,
would gate against unscaled logits and discard the gated output; tests/reference_spec.py DOCUMENTED_DIFFERENCES
checks petl against that code with those three lines fixed.

Prefixes are separate for encoder self-attention, decoder self-attention and cross-attention, each produced by
its own re-parameterisation MLP (attn_mode='prefix': embedding l×d -> Linear(d, mid_dim) -> tanh ->
Linear(mid_dim, 2·L·d_kv)) or learned directly (attn_mode='prefix_nomlp'). Under grouped-query attention a prefix
has one key/value per key/value head.

The prefix is NOT passed as past_key_values: a function registered in transformers' attention-function registry
receives each attention module and prepends that layer's prefix there, so caches and beam search are untouched.

Attention implementations. The prefix is added around the implementation the model was loaded with, which keeps
computing the attention: 'eager' (the model file's own eager_attention_forward) under the registered name
'petl_eager', 'sdpa' under 'petl_sdpa' (config._attn_implementation says which). output_attentions=True then does
what it does on the stock model: eager returns the weights, [batch, heads, q_len, l + k_len], those applied to
[P_v; V] (for concat the softmax over the prefix and the keys, rows summing to 1; for the gate of Eq. 7 the same
[λ·softmax(q P_kᵀ), (1 - λ)·softmax(q Kᵀ)]; for 'add' and the ReLU form the two parts as added); SDPA returns
none.
petl refuses, when applying, implementations that cannot take a prefix as they are: flash attention (its kernels
take a causal flag and a 2-D padding mask, not a mask over l + k keys in which every query sees every prefix
position), flex attention (its BlockMask is built for the k keys of the model) and paged attention (keys and values
live in its own cache blocks). Setting another implementation after petl.apply is refused at the next forward
pass, since the prefix would silently be dropped; model.set_attn_implementation('petl_eager') switches.
"""

from __future__ import annotations

import sys
import weakref

import torch
from torch import nn
from torch.nn import functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

from petl.methods.base import Captured, Delta, parameter_dtype
from petl.sites import AttentionSite, Sites

#: The attention implementations a prefix is added to; each is registered as NAME_PREFIX + its name.
IMPLEMENTATIONS = ("eager", "sdpa")
NAME_PREFIX = "petl_"
_GROUP_OF = weakref.WeakKeyDictionary()  # attention module -> (PrefixGroup, layer index)


class PrefixGroup(Delta):
    """The prefixes of one attention type (encoder self, decoder self or cross) for all its layers.

    Each layer's P_k, P_v are computed where that layer uses them, from the group's parameters alone (with the
    MLP, only that layer's rows of its last matrix), so gradient checkpointing of either kind recomputes them
    exactly and no tensor of the autograd graph outlives the forward pass. Without gradients (evaluation,
    generation) they are kept for the rest of one pass of the stack, and of every incremental decoding step
    that continues it; the next pass recomputes them.
    """

    def __init__(self, sites: list[AttentionSite], stack: nn.Module, length: int, mlp: bool, mid_dim: int,
                 dropout: float, option: str, composition: str, query: str, method_dtype: str = "auto") -> None:
        super().__init__()
        site = sites[0]
        self.sites_ = sites  # a list keeps stock modules out of this module's parameters
        self.stack = [stack]
        self.layers, self.length = len(sites), length
        self.kv_heads, self.head_dim, self.heads = site.num_kv_heads, site.head_dim, site.num_heads
        self.option, self.composition = option, composition
        weight = site.q.module.weight
        kw = dict(device=weight.device, dtype=parameter_dtype(method_dtype, weight.dtype))
        out = self.layers * 2 * self.kv_heads * self.head_dim
        if mlp:
            self.embedding = nn.Parameter(torch.randn(length, site.hidden, **kw))
            self.mlp = nn.Sequential(nn.Linear(site.hidden, mid_dim, **kw), nn.Tanh(), nn.Linear(mid_dim, out, **kw))
        else:
            self.prefix = nn.Parameter(torch.randn(length, out, **kw) * 0.02)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # The reference's 'cross_attn' (and BART's 'cross_attn_relu') query: W_q · LayerNorm(h), one LayerNorm over
        # d_model per attention module, applied to the module's input h.
        self.query_from_input = option == "cross_attn" or (option == "cross_attn_relu" and query == "layernorm")
        self.query_norms = nn.ModuleList(nn.LayerNorm(s.hidden, **kw) for s in sites) if self.query_from_input \
            else None
        # Each attention module's eager attention (its model file's eager_attention_forward), for 'petl_eager'
        self.eager_functions = [_model_eager(s.module) for s in sites]
        self._inputs: list[Captured] = []
        self._cache: dict[int, torch.Tensor] = {}
        self.record: dict | None = None  # set to a dict to record λ per layer (petl.inspect.gates)

    def compute_prefix(self, layer: int) -> torch.Tensor:
        """[2, kv_heads, length, head_dim]: P_k and P_v of one layer (the MLP folded)."""
        width = 2 * self.kv_heads * self.head_dim
        rows = slice(layer * width, (layer + 1) * width)
        if hasattr(self, "mlp"):
            first, _, last = self.mlp
            flat = F.linear(torch.tanh(first(self.embedding)), last.weight[rows], last.bias[rows])
        else:
            flat = self.prefix[:, rows]
        return self.dropout(flat).view(self.length, 2, self.kv_heads, self.head_dim).permute(1, 2, 0, 3)

    def all_prefixes(self) -> torch.Tensor:
        """[layers, 2, kv_heads, length, head_dim]: every layer's P_k and P_v."""
        return torch.stack([self.compute_prefix(layer) for layer in range(self.layers)])

    def layer_prefix(self, layer: int) -> torch.Tensor:
        if torch.is_grad_enabled():
            return self.compute_prefix(layer)
        cached = self._cache.get(layer)
        if cached is None:
            cached = self._cache[layer] = self.compute_prefix(layer)
        return cached

    def prefix_query(self, layer: int, query: torch.Tensor, scaling: float) -> torch.Tensor:
        """The query of the separate prefix attention, [batch, heads, q_len, head_dim]."""
        if not self.query_from_input:
            return query
        site, norm = self.sites_[layer], self.query_norms[layer]
        h = norm(self._inputs[layer].take().to(norm.weight.dtype)).to(site.q.module.weight.dtype)
        q = _project(site.q, h).view(*h.shape[:-1], self.heads, self.head_dim).transpose(1, 2).to(query.dtype)
        return q * scaling if self.option == "cross_attn" else q  # the reference's ReLU form is unscaled

    def attach(self) -> None:
        for layer, site in enumerate(self.sites_):
            _GROUP_OF[site.module] = (self, layer)
        if self.query_from_input:
            self._inputs = [self.capture_input(site.module) for site in self.sites_]
        self._handles.append(self.stack[0].register_forward_pre_hook(self._new_pass, with_kwargs=True))

    def _new_pass(self, module, args, kwargs) -> None:
        implementation = getattr(getattr(module, "config", None), "_attn_implementation", None)
        if implementation is not None and not implementation.startswith(NAME_PREFIX):
            raise RuntimeError(
                f"the model's attention implementation was set to {implementation!r} after petl.apply, which would "
                f"drop the prefix; call model.set_attn_implementation('{NAME_PREFIX}eager') or "
                f"('{NAME_PREFIX}sdpa') to switch (the prefix is added to {', '.join(map(repr, IMPLEMENTATIONS))})")
        past = kwargs.get("past_key_values")
        if past is None or not hasattr(past, "get_seq_length") or past.get_seq_length() == 0:
            self._cache = {}

    def detach(self) -> None:
        super().detach()
        for site in self.sites_:
            _GROUP_OF.pop(site.module, None)
        self._cache = {}

    def stored_count(self) -> int:
        return 2 * self.layers * self.length * self.kv_heads * self.head_dim + sum(
            p.numel() for p in (self.query_norms.parameters() if self.query_norms is not None else ()))

    def paper_count(self) -> int:
        return 2 * self.layers * self.length * self.kv_heads * self.head_dim


def _project(projection, x: torch.Tensor) -> torch.Tensor:
    """One projection of x (its slice, for a fused q/k/v projection such as GPT-2's c_attn)."""
    out = projection.module(x)
    return out[..., projection.start:projection.start + projection.width] if projection.is_slice else out


def _bool_mask(mask: torch.Tensor | None, query: torch.Tensor, key_len: int, causal: bool) -> torch.Tensor | None:
    """The model's mask over its own keys as booleans (True = may attend), or None for 'everything'."""
    if mask is not None:
        mask = mask[..., :key_len]
        return mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2
    q_len = query.shape[2]
    if not causal or q_len == 1:
        return None
    past = key_len - q_len  # query i sits at absolute position past + i
    return torch.ones(q_len, key_len, dtype=torch.bool, device=query.device).tril(past)[None, None]


def _is_causal(module: nn.Module, kwargs: dict) -> bool:
    causal = kwargs.get("is_causal")
    return bool(getattr(module, "is_causal", False) if causal is None else causal)


def _heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """Repeat key/value heads for grouped-query attention: [kv, ...] -> [heads, ...]."""
    return t if t.shape[0] == heads else t.repeat_interleave(heads // t.shape[0], dim=0)


def _model_eager(module: nn.Module):
    """The eager attention function of `module`'s model file (transformers passes it as the default of its
    attention registry), or None where the file defines none."""
    return getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)


def _uses_attention_registry(module: nn.Module) -> bool:
    """Whether `module`'s model file computes attention through transformers' attention-function registry."""
    return "ALL_ATTENTION_FUNCTIONS" in vars(sys.modules.get(type(module).__module__, sys))


def _additive(mask: torch.Tensor | None, like: torch.Tensor | None, query: torch.Tensor) -> torch.Tensor | None:
    """A boolean mask as the additive float mask eager attention takes (0 where allowed, the dtype's minimum
    elsewhere, as transformers' eager_mask builds it), in the dtype of the model's own mask `like` if it has one."""
    if mask is None:
        return None
    dtype = like.dtype if like is not None and like.is_floating_point() else query.dtype
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


def _attention_with_logsumexp(query, key, value, mask, scaling, dropout, training, position_bias=None):
    """Plain attention that also returns log Σ_j exp(score_j), the normaliser Eq. 7's gate needs, and the
    attention weights (after dropout)."""
    groups = query.shape[1] // key.shape[1]  # grouped-query attention: each key/value head serves `groups` heads
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if position_bias is not None:
        scores = scores + position_bias[..., :key.shape[2]]
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)
    probs = torch.exp(scores - lse.clamp_min(torch.finfo(scores.dtype).min)).nan_to_num(0.0)
    probs = nn.functional.dropout(probs, p=dropout, training=training)
    return torch.matmul(probs, value), lse, probs


def petl_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, *, implementation: str,
                   **kwargs):
    """The model's own attention (`implementation`: 'eager' or 'sdpa') plus this layer's prefix, if it has one.

    query: [batch, heads, q_len, head_dim]; key, value: [batch, kv_heads, k_len, head_dim]. Returns the attention
    output as [batch, q_len, heads, head_dim] and, as the implementation does, the attention weights (eager:
    [batch, heads, q_len, l + k_len] over the prefix and the keys) or None (SDPA).
    """
    eager = implementation == "eager"
    entry = _GROUP_OF.get(module)
    if entry is None:
        stock = _model_eager(module) if eager else sdpa_attention_forward
        return stock(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    group, layer = entry
    stock = group.eager_functions[layer] if eager else sdpa_attention_forward
    if stock is None:
        raise RuntimeError(f"{type(module).__name__} has no eager_attention_forward in its model file to add the "
                           f"prefix to; use model.set_attn_implementation('{NAME_PREFIX}sdpa')")
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    prefix = group.layer_prefix(layer).to(query.dtype)
    batch, heads = query.shape[0], query.shape[1]
    p_k, p_v = prefix[0], prefix[1]  # [kv_heads, l, head_dim]
    causal = _is_causal(module, kwargs)
    mask = _bool_mask(attention_mask, query, key.shape[2], causal)
    position_bias = kwargs.pop("position_bias", None)

    if group.option == "concat" and group.record is None:
        # Prefix tuning as published: concatenate P_k, P_v in front of the keys and values (left side of Eq. 7).
        key = torch.cat([p_k.unsqueeze(0).expand(batch, -1, -1, -1), key], dim=2)
        value = torch.cat([p_v.unsqueeze(0).expand(batch, -1, -1, -1), value], dim=2)
        if mask is not None:  # every query may attend to every prefix position
            mask = torch.cat([mask.new_ones(*mask.shape[:-1], group.length), mask], dim=-1)
        if position_bias is not None:
            position_bias = nn.functional.pad(position_bias[..., :key.shape[2] - group.length], (group.length, 0))
            kwargs["position_bias"] = position_bias
        kwargs["is_causal"] = False
        if eager:
            return stock(module, query, key, value, _additive(mask, attention_mask, query), scaling=scaling,
                         dropout=dropout, **kwargs)
        if key.shape[1] < heads and query.device.type == "cpu" and position_bias is None:
            # Grouped-query attention with a mask: transformers repeats K and V per query head (its CUDA kernels
            # would fall back to plain math otherwise), but the CPU flash kernel takes the key/value heads as they
            # are. Not repeating them saves that copy and keeps the tensors saved for backward 1/groups the size.
            out = nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout,
                                                             scale=scaling, enable_gqa=True)
            return out.transpose(1, 2).contiguous(), None
        return stock(module, query, key, value, mask, scaling=scaling, dropout=dropout, **kwargs)

    # Separate prefix attention (right side of Eq. 7): softmax(q P_kᵀ) P_v, or ReLU(q P_kᵀ) P_v for the MH adapter,
    # with the attention's dropout on these weights too (the reference drops both).
    training = module.training
    prefix_query = group.prefix_query(layer, query, scaling)
    prefix_scores = torch.matmul(prefix_query, _heads(p_k, heads).transpose(-1, -2))  # [b, h, q, l]
    if not group.query_from_input:  # the attention's own query, scaled as its keys' scores are
        prefix_scores = prefix_scores * scaling
    p_v = _heads(p_v, heads)
    weights = torch.relu(prefix_scores) if group.option == "cross_attn_relu" else torch.softmax(prefix_scores, dim=-1)
    weights = nn.functional.dropout(weights, p=dropout, training=training)
    prefix_out = torch.matmul(weights, p_v)

    if group.composition == "gate_add" or group.record is not None:
        main_out, main_lse, main_weights = _attention_with_logsumexp(query, key, value, mask, scaling, dropout,
                                                                     training, position_bias)
        gate = torch.sigmoid(torch.logsumexp(prefix_scores, dim=-1, keepdim=True) - main_lse)  # λ(x) of Eq. 7
        if group.record is not None:
            group.record[layer] = gate.squeeze(-1).detach()
    else:
        if position_bias is not None:
            kwargs["position_bias"] = position_bias
        main_out, main_weights = stock(module, query, key, value, attention_mask if eager else mask,
                                       scaling=scaling, dropout=dropout, **kwargs)
        main_out = main_out.transpose(1, 2)
        gate = None
    if group.option == "concat" or group.composition == "gate_add":  # concat here only when recording λ
        out = (1 - gate) * main_out + gate * prefix_out  # h <- (1 - λ) h + λ Δh
        applied = (gate * weights, (1 - gate) * main_weights) if eager else None
    else:
        out = main_out + prefix_out  # h <- h + Δh
        applied = (weights, main_weights) if eager else None
    return out.transpose(1, 2).contiguous(), None if applied is None else torch.cat(applied, dim=-1)


def petl_eager_attention(module, query, key, value, attention_mask, **kwargs):
    """Registered as 'petl_eager': the model file's eager attention with this layer's prefix."""
    return petl_attention(module, query, key, value, attention_mask, implementation="eager", **kwargs)


def petl_sdpa_attention(module, query, key, value, attention_mask, **kwargs):
    """Registered as 'petl_sdpa': transformers' SDPA attention with this layer's prefix."""
    return petl_attention(module, query, key, value, attention_mask, implementation="sdpa", **kwargs)


_FUNCTIONS = {"eager": (petl_eager_attention, eager_mask), "sdpa": (petl_sdpa_attention, sdpa_mask)}
#: Why an implementation cannot take a prefix as it is (by the start of its name).
_REFUSED = {
    "flash": "flash-attention kernels take a causal flag and a 2-D padding mask, not the mask over l + k keys a "
             "prefix needs (every query sees every prefix position)",
    "flex": "flex attention's BlockMask is built for the model's own k keys, not for l + k",
    "paged": "paged attention keeps keys and values in its own cache blocks, where a prefix has no place",
}


def implementation_of(model: nn.Module) -> str:
    """The implementation computing the model's attention: its own ('eager', 'sdpa', ...), also where petl wraps
    it ('petl_sdpa' -> 'sdpa')."""
    name = getattr(model.config, "_attn_implementation", None) or "sdpa"
    return name[len(NAME_PREFIX):] if name.startswith(NAME_PREFIX) else name


def check_implementation(model: nn.Module, sites: list[AttentionSite] | None = None) -> str:
    """The model's implementation if a prefix can be added to it, else ValueError saying why not. Without `sites`,
    only what the model's config says is checked (petl.apply does that before it runs the model to find them)."""
    name = implementation_of(model)
    if name not in IMPLEMENTATIONS:
        reason = next((why for start, why in _REFUSED.items() if start in name),
                      "petl adds a prefix to 'eager' and 'sdpa' only")
        raise ValueError(f"prefix methods cannot use the attention implementation {name!r}: {reason}. Load the model "
                         f"with attn_implementation='sdpa' or 'eager' (or call model.set_attn_implementation('sdpa') "
                         f"before petl.apply)")
    softcap = getattr(model.config, "attn_logit_softcapping", None)
    if softcap:
        raise ValueError(f"prefix methods do not soft-cap the prefix's attention scores, and this model caps its own "
                         f"(attn_logit_softcapping={softcap}), so the prefix would be weighed on another scale; set "
                         f"config.attn_logit_softcapping=None to train without the cap, or use another method")
    if sites is None:
        return name
    own = sorted({type(s.module).__name__ for s in sites if not _uses_attention_registry(s.module)})
    if own:
        raise ValueError(f"prefix methods add the prefix inside transformers' attention functions, and {own} compute "
                         f"attention in their own code (a relative-position or disentangled attention), which a "
                         f"prefix cannot enter without forking the model; adapters, LoRA and BitFit work here")
    if name == "eager":
        missing = sorted({type(s.module).__name__ for s in sites if _model_eager(s.module) is None})
        if missing:
            raise ValueError(f"prefix methods with attn_implementation='eager' add the prefix inside the model file's "
                             f"eager_attention_forward, which {missing} do not have; use 'sdpa'")
    return name


def use_prefix_attention(model: nn.Module) -> None:
    """Register petl's attention functions and switch the model to the one over its own implementation."""
    for name, (function, mask) in _FUNCTIONS.items():
        AttentionInterface.register(NAME_PREFIX + name, function)
        AttentionMaskInterface.register(NAME_PREFIX + name, mask)
    model.set_attn_implementation(NAME_PREFIX + implementation_of(model))


def build(model: nn.Module, sites: Sites, config) -> dict[str, Delta]:
    """One PrefixGroup per attention type for attn_mode 'prefix' / 'prefix_nomlp'."""
    if config.attn_mode not in ("prefix", "prefix_nomlp"):
        return {}
    check_implementation(model, sites.attention)  # before anything is attached
    encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
    deltas: dict[str, Delta] = {}
    for kind in ("encoder", "decoder", "cross"):
        group = [s for s in sites.attention if s.kind == kind]
        if group:
            stack = model.base_model if not encoder_decoder else (
                model.get_encoder() if kind == "encoder" else model.get_decoder())
            deltas[f"prefix_{kind}"] = PrefixGroup(
                group, stack, config.attn_bn, config.attn_mode == "prefix", config.mid_dim, config.prefix_dropout,
                config.attn_option, config.attn_composition, config.mh_adapter_query, config.method_dtype)
    return deltas
