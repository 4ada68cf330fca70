"""Bottleneck adapters (Houlsby et al., 2019) and the paper's parallel / scaled parallel adapters.

Table 1 and Eq. 4 / Eq. 8-10 of the paper:

    Δh = ReLU(x W_down) W_up
    sequential:  x is the sublayer's output h         h <- h + s · Δh(h)
    parallel:    x is the sublayer's input            h <- h + s · Δh(x)

s = 1 is plain adding, s > 1 the scaled parallel adapter, 'learnable_scalar' the trained s of Table 5.

Where exactly, as the reference implementation (jxhe/unify-parameter-efficient-tuning, 3222ce2) computes it:
- FFN, sequential: x is the FFN's output after the block's dropout, and Δh joins it before the residual add.
- FFN, parallel: x is the residual stream entering the FFN block (in a pre-norm layer, before its LayerNorm), and
  Δh joins the FFN's output after its dropout.
- FFN, Pfeiffer: x is the block's output after the residual add (after the LayerNorm in a post-norm layer); Δh
  joins the residual sum (before the LayerNorm in a post-norm layer).
- Attention, sequential: x is the output projection's output, before the layer's dropout.
- Attention, parallel: x is the attention module's input; Δh joins the heads' output before W_o (so W_o maps it).
Inside every adapter a dropout with the model's own rate follows the ReLU (the hidden rate on the FFN, the
attention rate at attention), as in the reference.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from petl.methods.base import Delta, matmul_input, parameter_dtype
from petl.sites import AttentionSite, FFNSite, Sites


class Adapter(Delta):
    """s · ReLU(LN_in?(x) W_down) W_up, with LN_out? applied before s; attached at an FFN or attention site."""

    def __init__(self, site: AttentionSite | FFNSite, bottleneck: int, insertion: str, scalar: float | str,
                 layernorm: str, init: str, dropout: float, device=None, dtype=None) -> None:
        super().__init__()
        self.site = [site]  # a list keeps stock modules out of this module's parameters
        self.insertion = insertion
        kw = dict(device=device, dtype=dtype)
        hidden = site.hidden
        self.down = nn.Linear(hidden, bottleneck, **kw)
        self.up = nn.Linear(bottleneck, hidden, **kw)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.layernorm_in = nn.LayerNorm(hidden, **kw) if layernorm == "in" else None
        # The reference computes LN(s · up) for 'out' (s then almost cancels); petl normalises, then scales.
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
        """Δh before the scale s: LN_out?(Dropout(ReLU(LN_in?(x) W_down)) W_up), in the parameters' dtype (the
        matmuls in autocast's, where it is on; the LayerNorms always in the parameters')."""
        dtype = self.down.weight.dtype
        if self.layernorm_in is not None:
            x = self.layernorm_in(x.to(dtype))
        change = self.up(self.dropout(torch.relu(self.down(matmul_input(x, dtype)))))
        if self.layernorm_out is not None:
            change = self.layernorm_out(change.to(dtype))
        return change

    @property
    def _fused_scale(self) -> float | None:
        """The fixed s an output hook fuses into its add (None: s = 1, or a learned s applied by forward)."""
        return None if self.fixed_scale in (None, 1.0) else self.fixed_scale

    def _for_fused_add(self, x: torch.Tensor) -> torch.Tensor:
        """What an output hook with `_fused_scale` adds: Δh(x) before a fixed s, s · Δh(x) for a learned s."""
        return self(x) if self.fixed_scale is None else self.unscaled(x)

    def attach(self) -> None:
        site = self.site[0]
        if isinstance(site, AttentionSite):
            self._attach_attention(site)
        else:
            self._attach_ffn(site)

    def _attach_attention(self, site: AttentionSite) -> None:
        if self.insertion == "parallel":
            source = self.capture_input(site.module)
            self.add_input_hook(site.o.module, lambda _heads: self(source.take()))
        else:
            self.add_output_hook(site.o.module, lambda inputs, output: self._for_fused_add(output), self._fused_scale)

    def _attach_ffn(self, site: FFNSite) -> None:
        scale = self._fused_scale
        if self.insertion == "pfeiffer":
            self._attach_pfeiffer(site)
            return
        if site.output is not None:  # FFN(x) after its dropout is one module's output
            if self.insertion == "parallel":
                residual = self.capture_input(site.residual)
                self.add_output_hook(site.output, lambda i, o: self._for_fused_add(residual.take()), scale)
            else:
                self.add_output_hook(site.output, lambda i, o: self._for_fused_add(o), scale)
            return
        # BART-like layers drop FFN(x) functionally, so Δh joins the residual sum y = x + dropout(FFN(x)) instead.
        residual = self.capture_input(site.residual)
        if self.insertion == "parallel":
            change = lambda y: self(residual.take())  # noqa: E731
        else:
            ffn_out = self.capture_output(site.last)
            layer = site.layer_module

            def change(y):
                x, out = residual.take(), ffn_out.take()
                dropped = y - x if (layer.training and site.dropout > 0) else out  # dropout(FFN(x))
                return self(dropped)
        self._at_sum(site, change)

    def _at_sum(self, site: FFNSite, change) -> None:
        where, module = site.sum_at
        if where == "input":
            self.add_input_hook(module, change)
        else:
            self.add_output_hook(module, lambda inputs, output: change(output))

    def _attach_pfeiffer(self, site: FFNSite) -> None:
        where, module = site.sum_at
        if where == "output":  # pre-norm: y <- y + Δh(y)
            self.add_output_hook(module, lambda inputs, output: self(output))
            return

        def hook(_module, inputs, output):  # post-norm: LN(y) <- LN(y + Δh(LN(y)))
            if self.merged:
                return None
            y = inputs[0]
            return F.layer_norm((y + self(output)).to(y.dtype), module.normalized_shape, module.weight,
                                module.bias, module.eps)

        self._handles.append(module.register_forward_hook(hook))


def build(sites: Sites, config) -> dict[str, Delta]:
    """Adapters for attn_mode='adapter' (every attention module) and ffn_mode='adapter' (every FFN)."""
    deltas: dict[str, Delta] = {}
    if config.attn_mode == "adapter":
        for site in sites.attention:
            weight = site.o.module.weight
            deltas[f"{site.name}.adapter"] = Adapter(
                site, config.attn_bn, config.attn_option, config.attn_adapter_scalar,
                config.attn_adapter_layernorm_option, config.attn_adapter_init_option, site.dropout,
                device=weight.device, dtype=parameter_dtype(config.method_dtype, weight.dtype))
    if config.ffn_mode == "adapter":
        for site in sites.ffn:
            weight = site.last.weight
            deltas[f"{site.name}.adapter"] = Adapter(
                site, config.ffn_bn, config.ffn_option, config.ffn_adapter_scalar,
                config.ffn_adapter_layernorm_option, config.ffn_adapter_init_option, site.dropout,
                device=weight.device, dtype=parameter_dtype(config.method_dtype, weight.dtype))
    return deltas
