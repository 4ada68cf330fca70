"""`apply`: attach one method of the unified view to a stock transformers model, and freeze the rest."""

from __future__ import annotations

import copy
import dataclasses
import types
from pathlib import Path

import torch
from torch import nn

from petl.config import PETLConfig, resolve
from petl.methods import adapter, bitfit, lora, prefix, prompt
from petl.methods.base import Delta, parameter_dtype
from petl.sites import find_sites

ATTRIBUTE = "petl"  # the model attribute that holds the method's modules


class PETLModules(nn.Module):
    """Every Delta of one model, with its config. Its state is exactly what `petl.save` stores."""

    def __init__(self, config: PETLConfig, deltas: dict[str, Delta]) -> None:
        super().__init__()
        self.config = config
        self.deltas = nn.ModuleDict({name.replace(".", "-"): delta for name, delta in deltas.items()})

    def attach(self) -> None:
        for delta in self.deltas.values():
            delta.attach()

    def detach(self) -> None:
        for delta in self.deltas.values():
            delta.detach()

    def __deepcopy__(self, memo):
        """copy.deepcopy(model): the copied stock modules carry copies of this method's hooks, which would still
        call the original deltas. Take those off and attach the copied deltas to the copied modules instead."""
        copied = type(self).__new__(type(self))
        memo[id(self)] = copied
        for key, value in self.__dict__.items():
            copied.__dict__[key] = copy.deepcopy(value, memo)
        ours = {handle.id for delta in self.deltas.values() for handle in delta._handles}
        # (ancestors of this module are still being copied and have no hook dicts yet; none holds our hooks)
        for module in [m for m in memo.values() if isinstance(m, nn.Module) and "_forward_hooks" in m.__dict__]:
            for hooks in (module._forward_hooks, module._forward_pre_hooks, module._forward_hooks_with_kwargs,
                          module._forward_pre_hooks_with_kwargs, module._forward_hooks_always_called):
                for hook_id in ours & set(hooks):
                    del hooks[hook_id]
        for name, delta in copied.deltas.items():
            delta._handles = []
            if self.deltas[name]._handles:
                delta.attach()
        return copied


def config_of(model: nn.Module) -> PETLConfig | None:
    """The PETLConfig applied to `model`, or None."""
    modules = model._modules.get(ATTRIBUTE)
    return modules.config if isinstance(modules, PETLModules) else None


def modules_of(model: nn.Module) -> PETLModules:
    modules = model._modules.get(ATTRIBUTE)
    if not isinstance(modules, PETLModules):
        raise ValueError("this model has no petl method attached; call petl.apply(model, variant) first")
    return modules


def head_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Parameters of a newly initialised task head: outside the pretrained base model, not the LM head."""
    base = getattr(model, "base_model", model)
    if base is model:
        return {}
    inside = {id(p) for p in base.parameters()}
    output_embeddings = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tied = {id(p) for p in output_embeddings.parameters()} if output_embeddings is not None else set()
    return {name: p for name, p in model.named_parameters()
            if id(p) not in inside and id(p) not in tied and not name.startswith(ATTRIBUTE + ".")}


def apply(model: nn.Module, variant_or_config: "str | PETLConfig | dict" = "mam", **overrides) -> nn.Module:
    """Attach a method (a preset name, a dict or a PETLConfig, plus option overrides) to a stock model, in place.

    Every pretrained weight is frozen (unless full_finetune); the method's modules and a newly initialised task
    head train. Returns the model.
    """
    config = resolve(variant_or_config, **overrides)
    if config.mh_adapter_query is None and config.attn_option == "cross_attn_relu":
        # The reference's own two choices: BART takes W_q · LN(h), mBART and RoBERTa the attention's query.
        arch = getattr(getattr(model, "config", None), "model_type", None)
        query = "layernorm" if arch in ("bart", "marian") else "attention"
        config = dataclasses.replace(config, mh_adapter_query=query)
    if config_of(model) is not None:
        raise ValueError("this model already has a petl method; apply one method to a fresh model")
    if not hasattr(model, "config"):
        raise TypeError(f"petl.apply needs a transformers PreTrainedModel, got {type(model).__name__}")
    sites = find_sites(model)
    deltas: dict[str, Delta] = {}
    deltas.update(prefix.build(model, sites, config))
    deltas.update(prompt.build(model, config))
    deltas.update(lora.build(sites, config))
    deltas.update(adapter.build(sites, config))
    deltas.update(bitfit.build(model, sites, config))
    modules = PETLModules(config, deltas)
    model.add_module(ATTRIBUTE, modules)
    modules.train(model.training)  # the model's train() / eval() governs the method's modules from here on
    modules.attach()
    if callable(getattr(model, "save_pretrained", None)):
        model.save_pretrained = types.MethodType(_save_pretrained_with_method, model)
    if config.prefix_attention:
        prefix.use_prefix_attention(model)  # the model's own eager or SDPA attention, with the prefix
    _head_in_method_dtype(model, config)
    head = {id(p) for p in head_parameters(model).values()}
    method = {id(p) for p in modules.parameters()}
    for parameter in model.parameters():
        parameter.requires_grad_(config.full_finetune or id(parameter) in head or id(parameter) in method)
    return model


def _head_in_method_dtype(model: nn.Module, config: PETLConfig) -> None:
    """A newly initialised task head trains beside the method, so it takes the method's dtype too
    (PETLConfig.method_dtype: float32 on a half-precision base). Its modules are cast, and a pre-hook casts what
    they receive to their own dtype, so their logits come out in it (the loss is then computed from float32
    logits). Full fine-tuning trains every weight in the model's own dtype."""
    head = head_parameters(model)
    if config.full_finetune or not head:
        return
    base_dtype = next(iter(head.values())).dtype
    dtype = parameter_dtype(config.method_dtype, base_dtype)
    if dtype == base_dtype:
        return
    ids = {id(p) for p in head.values()}
    tops: list[str] = []  # the outermost modules whose parameters are all the head's
    for name, module in model.named_modules():
        inside = list(module.parameters())
        if inside and all(id(p) in ids for p in inside) and not any(name.startswith(t + ".") for t in tops):
            tops.append(name)
            module.to(dtype)
            module.register_forward_pre_hook(_inputs_in_own_dtype, with_kwargs=True)


def _inputs_in_own_dtype(module: nn.Module, args, kwargs):
    dtype = next(module.parameters()).dtype

    def cast(value):
        return value.to(dtype) if isinstance(value, torch.Tensor) and value.is_floating_point() else value

    return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}


def _mergeable(model: nn.Module) -> list[Delta]:
    deltas = list(modules_of(model).deltas.values())
    fixed = [type(d).__name__ for d in deltas if not hasattr(d, "merge")]
    if fixed:
        raise ValueError(f"only modifications linear in the input (LoRA, BitFit) can be merged; this model has "
                         f"{sorted(set(fixed))}")
    return deltas


@torch.no_grad()
def merge(model: nn.Module) -> nn.Module:
    """Fold LoRA / BitFit updates into the frozen weights (W <- W + s·W_up W_down) and take the hooks off, so the
    merged model runs exactly the stock model's computation."""
    for delta in _mergeable(model):
        if not delta.merged:
            delta.merge(+1.0)
            delta.detach()
    return model


SAVED_METHOD = "petl"  # the folder save_pretrained writes the method into, beside the model's own files


def _save_pretrained_with_method(model: nn.Module, save_directory, *args, **kwargs):
    """save_pretrained of a model carrying a petl method (Trainer.save_model and its checkpoints call it): the
    transformers files as usual (the method's tensors among them, so a Trainer resumes with them), and the method
    in petl's format in <save_directory>/petl, so `from_pretrained(folder)` + `petl.load(model, folder)` restores
    it; from_pretrained alone would drop the method's tensors as unexpected."""
    from petl.io import save
    result = type(model).save_pretrained(model, save_directory, *args, **kwargs)
    if kwargs.get("is_main_process", True):
        save(model, Path(save_directory) / SAVED_METHOD)
    return result


def unload(model: nn.Module) -> nn.Module:
    """After `merge`: take the method off, so that the model is a plain transformers model again (its state_dict
    holds no petl.* tensor, save_pretrained writes the stock model with the updates folded in). Refused while a
    delta is not merged, since unloading it would drop what it learned."""
    modules = modules_of(model)
    unmerged = sorted(name for name, delta in modules.deltas.items() if not getattr(delta, "merged", False))
    if unmerged:
        raise ValueError(f"unload drops the method: merge it first (petl.merge); not merged: {unmerged[:3]}"
                         f"{' ...' if len(unmerged) > 3 else ''}")
    modules.detach()
    delattr(model, ATTRIBUTE)
    model.__dict__.pop("save_pretrained", None)
    return model


@torch.no_grad()
def unmerge(model: nn.Module) -> nn.Module:
    """Undo `merge`: subtract the updates again and put the hooks back."""
    for delta in _mergeable(model):
        if delta.merged:
            delta.merge(-1.0)
            delta.attach()
    return model
