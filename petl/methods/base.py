"""The one mechanism: a modification Δh attached at a site of a stock model (the paper's Section 3, Table 1).

Every method is a `Delta` module. It owns its new parameters and attaches itself with forward hooks, so the
stock model's code is never copied: the hook adds Δh to the output of the site's module, computing Δh from the
sublayer input (parallel insertion) or from the sublayer output (sequential insertion).
"""

from __future__ import annotations

import torch
from torch import nn


class Delta(nn.Module):
    """Base class of every method's module. Trainability and saving are decided by this type alone."""

    def __init__(self) -> None:
        super().__init__()
        self._handles: list = []
        self.merged = False

    def attach(self) -> None:
        """Register this Δh at its site (hooks)."""
        raise NotImplementedError

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def stored_count(self) -> int:
        """Parameters stored after training (a re-parameterisation such as the prefix MLP folded away)."""
        return sum(p.numel() for p in self.parameters())

    def paper_count(self) -> int:
        """Parameters as the paper's Appendix B counts them (weight matrices of the method only)."""
        return sum(p.numel() for p in self.parameters() if p.dim() >= 2)

    def add_output_hook(self, module: nn.Module, delta_fn, scale: float | None = None) -> None:
        """h <- h + Δh at `module`'s output; delta_fn(inputs, output) returns Δh (or None for no change).

        With a fixed `scale` s, delta_fn returns the unscaled Δh and the hook adds s·Δh in one fused operation
        (torch.add with alpha), saving the separate multiply and its temporary.
        """

        def hook(_module, inputs, output):
            if self.merged:
                return None
            change = delta_fn(inputs, output)
            if change is None:
                return None
            return output + change if scale is None else torch.add(output, change, alpha=scale)

        self._handles.append(module.register_forward_hook(hook))

    def capture_input(self, module: nn.Module, store) -> None:
        """Hand the hidden states entering `module` (first argument, or `hidden_states=`) to store(x)."""

        def pre_hook(_module, args, kwargs):
            store(args[0] if args else kwargs.get("hidden_states", kwargs.get("input")))

        self._handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))


class SublayerInput:
    """The input x of a sublayer, for parallel insertion (Δh = f(x) added to the sublayer's output).

    When the sublayer is one module (Llama's mlp) the output hook already sees x; when it spans two modules
    (BART's fc1 ... fc2) a pre-hook on the first one keeps x until the output hook of the second one uses it.
    """

    def __init__(self, delta: Delta, sublayer_in: nn.Module, sublayer_out: nn.Module) -> None:
        self.same = sublayer_in is sublayer_out
        self.value: torch.Tensor | None = None
        if not self.same:
            delta.capture_input(sublayer_in, self._store)

    def _store(self, x: torch.Tensor) -> None:
        self.value = x

    def take(self, inputs: tuple) -> torch.Tensor:
        if self.same:
            return inputs[0]
        x, self.value = self.value, None
        if x is None:
            raise RuntimeError("petl: a parallel Δh found no sublayer input; was the sublayer called out of order?")
        return x


def conv1d_or_linear_shape(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of an nn.Linear or a transformers Conv1D (whose weight is stored transposed)."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    weight = module.weight
    return weight.shape[0], weight.shape[1]
