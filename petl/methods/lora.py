"""LoRA (Hu et al., 2021) in the unified view: parallel, on a projection matrix, scaled add (Table 1, Eq. 5).

    h <- h + s · Δh,   Δh = x W_down W_up,   s = lora_alpha / r

On attention it modifies W_q and W_v; on the FFN every FFN weight matrix (W_1, W_2; Llama's three).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from petl.methods.base import Delta, conv1d_or_linear_shape, matmul_input, parameter_dtype
from petl.sites import Projection, Sites


class LoRA(Delta):
    """s · x W_down W_up added to one projection's output (or to its q / k / v slice when fused)."""

    def __init__(self, projection: Projection, rank: int, alpha: float, dropout: float, init: str,
                 method_dtype: str = "auto") -> None:
        super().__init__()
        in_features, out_features = conv1d_or_linear_shape(projection.module)
        self.projection = [projection]  # a list keeps the stock module out of this module's parameters
        self.out_features = out_features if projection.width is None else projection.width
        weight = projection.module.weight
        kw = dict(device=weight.device, dtype=parameter_dtype(method_dtype, weight.dtype))
        self.down = nn.Linear(in_features, rank, bias=False, **kw)
        self.up = nn.Linear(rank, self.out_features, bias=False, **kw)
        self.scaling = alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        if init == "lora":  # Δh = 0 at start: the model begins exactly as the pretrained one
            nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
            nn.init.zeros_(self.up.weight)
        else:  # 'bert': N(0, 0.02) for both matrices
            nn.init.normal_(self.down.weight, std=0.02)
            nn.init.normal_(self.up.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.unscaled(x) * self.scaling

    def unscaled(self, x: torch.Tensor) -> torch.Tensor:
        """x W_down W_up: Δh before the scale s (the hook adds s·Δh in one fused add), in the parameters' dtype
        (or autocast's)."""
        return self.up(self.down(self.dropout(matmul_input(x, self.down.weight.dtype))))

    def attach(self) -> None:
        projection = self.projection[0]
        if not projection.is_slice:
            self.add_output_hook(projection.module, lambda inputs, output: self.unscaled(inputs[0]), self.scaling)
        else:
            before = projection.start
            after = conv1d_or_linear_shape(projection.module)[1] - before - self.out_features
            self.add_output_hook(projection.module,
                                 lambda inputs, output: F.pad(self.unscaled(inputs[0]), (before, after)), self.scaling)

    def _weight_update(self) -> torch.Tensor:
        """ΔW = s · W_up W_down in nn.Linear's (out, in) layout."""
        return (self.up.weight @ self.down.weight) * self.scaling

    @torch.no_grad()
    def merge(self, sign: float = 1.0) -> None:
        projection = self.projection[0]
        update = self._weight_update().to(projection.module.weight.dtype) * sign
        start = projection.start or 0
        if isinstance(projection.module, nn.Linear):  # (out, in): a fused projection's slice is a block of rows
            projection.module.weight[start:start + self.out_features] += update
        else:  # Conv1D stores (in, out): a fused projection's slice is a block of columns
            projection.module.weight[:, start:start + self.out_features] += update.T
        self.merged = sign > 0


def build(sites: Sites, config) -> dict[str, Delta]:
    """LoRA deltas for attn_mode='lora' (W_q, W_v) and ffn_mode='lora' (every FFN matrix)."""
    deltas: dict[str, Delta] = {}
    if config.attn_mode == "lora":
        for site in sites.attention:
            for name in ("q", "v"):
                deltas[f"{site.name}.lora_{name}"] = LoRA(
                    getattr(site, name), config.attn_bn, config.lora_alpha, config.lora_dropout, config.lora_init,
                    config.method_dtype)
    if config.ffn_mode == "lora":
        for site in sites.ffn:
            for index, linear in enumerate(site.linears):
                deltas[f"{site.name}.lora_{index}"] = LoRA(
                    Projection(linear), config.ffn_bn, config.lora_alpha, config.lora_dropout, config.lora_init,
                    config.method_dtype)
    return deltas
