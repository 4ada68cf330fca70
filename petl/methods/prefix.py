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
"""

from __future__ import annotations

import weakref

import torch
from torch import nn
from torch.nn import functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from petl.methods.base import Captured, Delta, parameter_dtype
from petl.sites import AttentionSite, Sites

ATTENTION_NAME = "petl"
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

    def _new_pass(self, _module, args, kwargs) -> None:
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
    if projection.part is None:
        return out
    width = out.shape[-1] // projection.parts
    return out[..., projection.part * width:(projection.part + 1) * width]


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


def _attention_with_logsumexp(query, key, value, mask, scaling, dropout, training, position_bias=None):
    """Plain attention that also returns log Σ_j exp(score_j), the normaliser Eq. 7's gate needs."""
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
    return torch.matmul(probs, value), lse


def petl_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The attention function registered as 'petl': stock SDPA plus this layer's prefix, if it has one.

    query: [batch, heads, q_len, head_dim]; key, value: [batch, kv_heads, k_len, head_dim]. Returns the
    attention output as [batch, q_len, heads, head_dim] and no weights, like transformers' SDPA function.
    """
    entry = _GROUP_OF.get(module)
    if entry is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    group, layer = entry
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
        if key.shape[1] < heads and query.device.type == "cpu" and position_bias is None:
            # Grouped-query attention with a mask: transformers repeats K and V per query head (its CUDA kernels
            # would fall back to plain math otherwise), but the CPU flash kernel takes the key/value heads as they
            # are. Not repeating them saves that copy and keeps the tensors saved for backward 1/groups the size.
            out = nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout,
                                                             scale=scaling, enable_gqa=True)
            return out.transpose(1, 2).contiguous(), None
        return sdpa_attention_forward(module, query, key, value, mask, scaling=scaling, dropout=dropout, **kwargs)

    # Separate prefix attention (right side of Eq. 7): softmax(q P_kᵀ) P_v, or ReLU(q P_kᵀ) P_v for the MH adapter,
    # with the attention's dropout on these weights too (the reference drops both).
    training = module.training
    prefix_query = group.prefix_query(layer, query, scaling)
    prefix_scores = torch.matmul(prefix_query, _heads(p_k, heads).transpose(-1, -2))  # [b, h, q, l]
    if not group.query_from_input:  # the attention's own query, scaled as its keys' scores are
        prefix_scores = prefix_scores * scaling
    p_v = _heads(p_v, heads)
    weights = torch.relu(prefix_scores) if group.option == "cross_attn_relu" else torch.softmax(prefix_scores, dim=-1)
    prefix_out = torch.matmul(nn.functional.dropout(weights, p=dropout, training=training), p_v)

    if group.composition == "gate_add" or group.record is not None:
        main_out, main_lse = _attention_with_logsumexp(query, key, value, mask, scaling, dropout, training,
                                                       position_bias)
        gate = torch.sigmoid(torch.logsumexp(prefix_scores, dim=-1, keepdim=True) - main_lse)  # λ(x) of Eq. 7
        if group.record is not None:
            group.record[layer] = gate.squeeze(-1).detach()
    else:
        if position_bias is not None:
            kwargs["position_bias"] = position_bias
        main_out = sdpa_attention_forward(module, query, key, value, mask, scaling=scaling, dropout=dropout,
                                          **kwargs)[0].transpose(1, 2)
        gate = None
    if group.option == "concat" or group.composition == "gate_add":  # concat here only when recording λ
        out = (1 - gate) * main_out + gate * prefix_out  # h <- (1 - λ) h + λ Δh
    else:
        out = main_out + prefix_out  # h <- h + Δh
    return out.transpose(1, 2).contiguous(), None


def register_attention() -> None:
    """Make 'petl' a valid attention implementation, with SDPA's mask function (masks are then built as usual)."""
    AttentionInterface.register(ATTENTION_NAME, petl_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)


def build(model: nn.Module, sites: Sites, config) -> dict[str, Delta]:
    """One PrefixGroup per attention type for attn_mode 'prefix' / 'prefix_nomlp'."""
    if config.attn_mode not in ("prefix", "prefix_nomlp"):
        return {}
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
