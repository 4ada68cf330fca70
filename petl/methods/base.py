"""The one mechanism: a modification Δh attached at a site of a stock model (the paper's Section 3, Table 1).

Every method is a `Delta` module. It owns its new parameters and attaches itself with hooks, so the stock
model's code is never copied. The routes, all registered in `attach` and removed in `detach`:
- an output hook adds Δh to a module's output (LoRA on a projection, the sequential adapters, Pfeiffer);
- an input hook adds Δh to a module's input (the parallel attention adapter before W_o; FFN adapters at the
  residual sum of BART-like layers, whose dropout is functional);
- `capture_input` / `capture_output` hand a tensor seen earlier in the pass to a later hook (the parallel
  adapter's x, the prefix query's LayerNorm input);
- prefix tuning alone changes the attention itself, through an attention function registered in transformers'
  AttentionInterface (methods/prefix.py); prompt tuning rewrites the stack's input embeddings with a pre-hook
  (methods/prompt.py); BitFit swaps b + Δb into the module for its call so the add fuses (methods/bitfit.py).

Precision: a method's parameters may be in another dtype than the stock model's (PETLConfig.method_dtype; float32
on a bfloat16 base by default). Each Δh then casts the hidden states it reads to its parameters' dtype (not
needed under autocast, which runs every matmul in its own dtype) and the hooks below round h + Δh to h's dtype, so
the stock model downstream sees the dtype it was built for.
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
            total = output + change if scale is None else torch.add(output, change, alpha=scale)
            return total.to(output.dtype)  # h + Δh in the wider of the two dtypes, rounded once to h's

        self._handles.append(module.register_forward_hook(hook))

    def add_input_hook(self, module: nn.Module, delta_fn) -> None:
        """x <- x + Δh at `module`'s first input (before it runs); delta_fn(x) returns Δh."""

        def pre_hook(_module, args, kwargs):
            if self.merged:
                return None
            if args:
                return ((args[0] + delta_fn(args[0])).to(args[0].dtype), *args[1:]), kwargs
            key = "hidden_states" if "hidden_states" in kwargs else "input"
            return args, {**kwargs, key: (kwargs[key] + delta_fn(kwargs[key])).to(kwargs[key].dtype)}

        self._handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))

    def capture_input(self, module: nn.Module) -> "Captured":
        """A holder that receives the hidden states entering `module` (first argument, or `hidden_states=`)."""
        held = Captured()

        def pre_hook(_module, args, kwargs):
            held.value = args[0] if args else kwargs.get("hidden_states", kwargs.get("input"))

        self._handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
        return held

    def capture_output(self, module: nn.Module) -> "Captured":
        """A holder that receives `module`'s output."""
        held = Captured()

        def hook(_module, _inputs, output):
            held.value = output

        self._handles.append(module.register_forward_hook(hook))
        return held


class Captured:
    """A tensor seen at one point of the forward pass and used by a Δh at a later point of the same pass (the
    parallel adapter's input x, read before the sublayer and used after it). `take` hands it over once."""

    def __init__(self) -> None:
        self.value: torch.Tensor | None = None

    def take(self) -> torch.Tensor:
        value, self.value = self.value, None
        if value is None:
            raise RuntimeError("petl: a Δh found no captured input; was the sublayer called out of order?")
        return value


def parameter_dtype(choice: str, base: torch.dtype) -> torch.dtype:
    """The dtype of a method's parameters on a base whose weights are in `base` (PETLConfig.method_dtype):
    'auto' -> float32 below float32's precision (float16, bfloat16), else `base` (float32, float64); 'base' ->
    `base`; 'float32' -> float32."""
    if choice == "base":
        return base
    if choice == "float32":
        return torch.float32
    if choice == "auto":
        return base if base in (torch.float32, torch.float64) else torch.float32
    raise ValueError(f"method_dtype={choice!r} is not valid; choose one of 'auto', 'base', 'float32'")


def matmul_input(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x as a matmul with parameters of `dtype` takes it: cast to `dtype`, except under autocast on x's device,
    which casts both operands to its own dtype anyway (casting x first would only copy it)."""
    if x.dtype == dtype or torch.is_autocast_enabled(x.device.type):
        return x
    return x.to(dtype)


def conv1d_or_linear_shape(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of an nn.Linear or a transformers Conv1D (whose weight is stored transposed)."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    weight = module.weight
    return weight.shape[0], weight.shape[1]
