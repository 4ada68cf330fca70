"""BitFit (Ben Zaken et al., 2021): train only the bias terms.

In the unified view a bias update is the simplest Δh: a learned vector added to a module's output,
h <- h + Δb, parallel and input-independent. Training Δb is exactly training the bias b + Δb, and `merge`
folds it into b.
"""

from __future__ import annotations

import torch
from torch import nn

from petl.methods.base import Delta, parameter_dtype
from petl.sites import Sites


class BiasDelta(Delta):
    """h <- h + Δb at one biased module (linear, Conv1D or LayerNorm)."""

    def __init__(self, module: nn.Module, method_dtype: str = "auto") -> None:
        super().__init__()
        self.module = [module]  # a list keeps the stock module out of this module's parameters
        dtype = parameter_dtype(method_dtype, module.bias.dtype)
        self.bias = nn.Parameter(torch.zeros_like(module.bias, dtype=dtype))
        self._stock: nn.Parameter | None = None

    def attach(self) -> None:
        """While the module runs, its bias is b + Δb, so the addition fuses into its own kernel (addmm,
        layer_norm) instead of a separate pass over the output: h = x W + (b + Δb) = (x W + b) + Δb. The sum is
        taken in the wider dtype and rounded once to b's, the dtype the module computes in."""
        module = self.module[0]

        def use_sum(mod, _args):
            if not self.merged:
                self._stock = mod._parameters["bias"]
                mod._parameters["bias"] = (self._stock + self.bias).to(self._stock.dtype)

        def restore(mod, _args, _output):
            if self._stock is not None:
                mod._parameters["bias"], self._stock = self._stock, None

        self._handles.append(module.register_forward_pre_hook(use_sum))
        self._handles.append(module.register_forward_hook(restore, always_call=True))

    def paper_count(self) -> int:
        return self.bias.numel()

    @torch.no_grad()
    def merge(self, sign: float = 1.0) -> None:
        self.module[0].bias += sign * self.bias.to(self.module[0].bias.dtype)
        self.merged = sign > 0


def build(model: nn.Module, sites: Sites, config) -> dict[str, Delta]:
    """One BiasDelta per biased module of the backbone (task heads train fully anyway)."""
    if config.attn_mode != "bitfit":
        return {}
    deltas = {f"{name}.bitfit": BiasDelta(module, config.method_dtype)
              for name, module in model.base_model.named_modules()
              if isinstance(getattr(module, "bias", None), nn.Parameter) and module.bias.dim() == 1}
    if not deltas:
        raise ValueError(f"BitFit needs bias terms, and this {model.config.model_type} model has none")
    return deltas
