"""Look inside a trained method: the gate λ(x) of Eq. 7 per layer and head, and the size of every update."""

from __future__ import annotations

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
    groups = {name: d for name, d in modules_of(model).deltas.items() if isinstance(d, PrefixGroup)}
    if not groups:
        raise ValueError("this model's method has no prefix, so it has no gate λ")
    for group in groups.values():
        group.record = {}
    try:
        model(**inputs)
        return {name: dict(group.record) for name, group in groups.items()}
    finally:
        for group in groups.values():
            group.record = None


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
