"""Look inside a method: the gate λ(x) of Eq. 7 per layer and head, the size of every update, and how far apart
the model's representations of different inputs are (`trace`, which a training run can log every few steps)."""

from __future__ import annotations

import contextlib

import pandas as pd
import torch
from torch import nn

from petl.core import modules_of
from petl.methods.adapter import Adapter
from petl.methods.bitfit import BiasDelta
from petl.methods.lora import LoRA
from petl.methods.prefix import PrefixGroup
from petl.methods.prompt import PromptTuning


@torch.no_grad()
def gates(model: nn.Module, **inputs) -> dict[str, dict[int, torch.Tensor]]:
    """λ(x) of Eq. 7 for every prefix group: {group: {layer: [batch, heads, query]}} on one forward pass.

    For concatenated prefixes (prefix tuning as published) λ is the attention mass that falls on the prefix.
    """
    with _recording_gates(model) as groups:
        if not groups:
            raise ValueError("this model's method has no prefix, so it has no gate λ")
        model(**inputs)
        return {name: dict(group.record) for name, group in groups.items()}


@contextlib.contextmanager
def _recording_gates(model: nn.Module):
    """{name: PrefixGroup} of the model, each recording λ per layer into its `record` until the block ends."""
    groups = {name: d for name, d in modules_of(model).deltas.items() if isinstance(d, PrefixGroup)}
    for group in groups.values():
        group.record = {}
    try:
        yield groups
    finally:
        for group in groups.values():
            group.record = None


@torch.no_grad()
def trace(model: nn.Module, **inputs) -> dict[str, float]:
    """A few numbers that show whether a method is still letting the input through, on one forward pass:

    - ``gate_<group>_l<i>``: for every prefix group, λ(x) of Eq. 7 at layer i, averaged over heads and the
      batch's real (unpadded) query positions: the share of attention that the prefix takes;
    - ``spread_l<i>``: how different the batch's inputs look after layer i (0: the embeddings), the standard
      deviation over examples of the mean-pooled hidden state, averaged over its dimensions (the encoder's, for
      an encoder-decoder model). A spread falling towards 0 means every input gets nearly the same
      representation, so no head on top can tell them apart.

    Runs in evaluation mode (no dropout, no random numbers drawn) and restores the model's mode, so a training run
    that traces itself computes what it computes without tracing.
    """
    mask = inputs.get("attention_mask")
    was_training = model.training
    model.eval()
    try:
        with _recording_gates(model) as groups:
            out = model(**inputs, output_hidden_states=True)
            row: dict[str, float] = {}
            for name, group in groups.items():
                for layer, gate in sorted(group.record.items()):  # [batch, heads, query]
                    real = mask[:, None, :].expand_as(gate).bool() if mask is not None and mask.shape[-1] == \
                        gate.shape[-1] else torch.ones_like(gate, dtype=torch.bool)
                    row[f"gate_{name.removeprefix('prefix_')}_l{layer}"] = float(gate[real].float().mean())
        hidden = getattr(out, "encoder_hidden_states", None) or out.hidden_states
        for layer, h in enumerate(hidden):
            # the real tokens' mean (every position where a method added some, as prompt tuning does)
            weights = mask if mask is not None and mask.shape[-1] == h.shape[1] else torch.ones(h.shape[:2])
            weights = weights[..., None].to(h.device, h.dtype)
            pooled = (h * weights).sum(1) / weights.sum(1).clamp_min(1)
            row[f"spread_l{layer}"] = float(pooled.float().std(0).mean())
        return row
    finally:
        model.train(was_training)


@torch.no_grad()
def update_norms(model: nn.Module) -> pd.DataFrame:
    """One row per Delta: its site, kind and the Frobenius norm of what it adds (or stores)."""
    rows = []
    for name, delta in modules_of(model).deltas.items():
        site = name.replace("-", ".")
        if isinstance(delta, LoRA):
            rows.append(dict(site=site, method="lora", norm=delta._weight_update().norm().item(),
                             scale=delta.scaling))
        elif isinstance(delta, Adapter):
            product = (delta.up.weight @ delta.down.weight).norm().item()
            rows.append(dict(site=site, method=f"adapter ({delta.insertion})", norm=product,
                             scale=float(delta.scale)))
        elif isinstance(delta, BiasDelta):
            rows.append(dict(site=site, method="bitfit", norm=delta.bias.norm().item(), scale=1.0))
        elif isinstance(delta, PromptTuning):
            rows.append(dict(site=site, method="prompt", norm=delta.prompt.norm().item(), scale=1.0))
        elif isinstance(delta, PrefixGroup):
            prefixes = delta.all_prefixes()
            for layer in range(delta.layers):
                rows.append(dict(site=f"{site}.layer{layer}", method="prefix",
                                 norm=prefixes[layer].norm().item(), scale=1.0))
    return pd.DataFrame(rows, columns=["site", "method", "norm", "scale"])
