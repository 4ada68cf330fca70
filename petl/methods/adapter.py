"""Bottleneck adapters (Houlsby et al., 2019) and the paper's parallel / scaled parallel adapters.

Table 1 and Eq. 4 / Eq. 8-10 of the paper:

    Δh = ReLU(x W_down) W_up
    sequential:  x is the sublayer's output h         h <- h + s · Δh(h)
    parallel:    x is the sublayer's input            h <- h + s · Δh(x)

s = 1 is plain adding, s > 1 the scaled parallel adapter, 'learnable_scalar' the trained s of Table 5.
The site is the attention sublayer (after its output projection) or the FFN sublayer.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from petl.methods.base import Delta, SublayerInput
from petl.sites import Sites


class Adapter(Delta):
    """s · ReLU(LN?(x) W_down) W_up added at a sublayer's output, from its input (parallel) or output (sequential)."""

    def __init__(self, sublayer_in: nn.Module, sublayer_out: nn.Module, hidden: int, bottleneck: int,
                 insertion: str, scalar: float | str, layernorm: str, init: str, device=None, dtype=None) -> None:
        super().__init__()
        self.sublayer = [sublayer_in, sublayer_out]  # a list keeps stock modules out of this module's parameters
        self.insertion = insertion
        kw = dict(device=device, dtype=dtype)
        self.down = nn.Linear(hidden, bottleneck, **kw)
        self.up = nn.Linear(bottleneck, hidden, **kw)
        self.layernorm_in = nn.LayerNorm(hidden, **kw) if layernorm == "in" else None
        self.layernorm_out = nn.LayerNorm(hidden, **kw) if layernorm == "out" else None
        if scalar == "learnable_scalar":
            self.scale = nn.Parameter(torch.ones((), **kw))
            self.fixed_scale = None
        else:
            self.register_buffer("scale", torch.tensor(float(scalar), **kw), persistent=False)
            self.fixed_scale = float(scalar)  # the hook fuses s into its add; s = 1 costs nothing
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.bias)
        if init == "lora":  # W_up = 0: Δh = 0 at start
            nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
            nn.init.zeros_(self.up.weight)
        else:  # 'bert': N(0, 0.02)
            nn.init.normal_(self.down.weight, std=0.02)
            nn.init.normal_(self.up.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.unscaled(x) * self.scale

    def unscaled(self, x: torch.Tensor) -> torch.Tensor:
        """Δh before the scale s: LN_out?(ReLU(LN_in?(x) W_down) W_up)."""
        if self.layernorm_in is not None:
            x = self.layernorm_in(x)
        change = self.up(torch.relu(self.down(x)))
        if self.layernorm_out is not None:
            change = self.layernorm_out(change)
        return change

    def _change(self, x: torch.Tensor) -> torch.Tensor:
        return self(x) if self.fixed_scale is None else self.unscaled(x)

    def attach(self) -> None:
        sublayer_in, sublayer_out = self.sublayer
        scale = None if self.fixed_scale in (None, 1.0) else self.fixed_scale
        if self.insertion == "parallel":
            source = SublayerInput(self, sublayer_in, sublayer_out)
            self.add_output_hook(sublayer_out, lambda inputs, output: self._change(source.take(inputs)), scale)
        else:
            self.add_output_hook(sublayer_out, lambda inputs, output: self._change(output), scale)


def _adapter(sublayer_in, sublayer_out, hidden, bottleneck, insertion, config) -> Adapter:
    weight = next(sublayer_out.parameters())
    return Adapter(sublayer_in, sublayer_out, hidden, bottleneck, insertion, config.ffn_adapter_scalar,
                   config.ffn_adapter_layernorm_option, config.ffn_adapter_init_option,
                   device=weight.device, dtype=weight.dtype)


def build(sites: Sites, config) -> dict[str, Delta]:
    """Adapters for attn_mode='adapter' (every attention sublayer) and ffn_mode='adapter' (every FFN)."""
    deltas: dict[str, Delta] = {}
    if config.attn_mode == "adapter":
        for site in sites.attention:
            deltas[f"{site.name}.adapter"] = _adapter(
                site.module, site.o.module, site.hidden, config.attn_bn, config.attn_option, config)
    if config.ffn_mode == "adapter":
        # 'pfeiffer' is the sequential adapter after the FFN only (Pfeiffer et al., 2021).
        insertion = "parallel" if config.ffn_option == "parallel" else "sequential"
        for site in sites.ffn:
            deltas[f"{site.name}.adapter"] = _adapter(
                site.sublayer_in, site.sublayer_out, site.hidden, config.ffn_bn, insertion, config)
    return deltas
