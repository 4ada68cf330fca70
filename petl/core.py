"""`apply`: attach a method of the unified view to a stock transformers model, and freeze the rest.

A model can carry several methods under names (`apply(model, cfg, name="b")`), as PEFT's adapters: they live
side by side in `model.petl` (a `Methods` dict, state-dict keys `petl.<name>.deltas...`), and at most one is
*active*, that is attached to the model's modules and trainable; `set_active(model, name)` switches,
`set_active(model, None)` or `with disabled(model):` turns every method off, `remove(model, name)` deletes one.
An inactive method's hooks are off, so the model computes exactly what a model carrying only the active method
computes (tests/test_named_methods.py). The task head, outside the base model, is one and shared.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import re
import types
from pathlib import Path

import torch
from torch import nn

from petl.config import PETLConfig, resolve
from petl.methods import adapter, bitfit, lora, prefix, prompt
from petl.methods.base import Delta, parameter_dtype
from petl.sites import find_sites

ATTRIBUTE = "petl"  # the model attribute that holds the methods' modules
DEFAULT_NAME = "default"  # the name of a method applied without one
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$")


class PETLModules(nn.Module):
    """Every Delta of one model, with its config. Its state is exactly what `petl.save` stores."""

    def __init__(self, config: PETLConfig, deltas: dict[str, Delta]) -> None:
        super().__init__()
        self.config = config
        self.deltas = nn.ModuleDict({name.replace(".", "-"): delta for name, delta in deltas.items()})

    @property
    def merged(self) -> bool:
        """Whether an update of this method is folded into the base weights (petl.merge)."""
        return any(delta.merged for delta in self.deltas.values())

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


class Methods(nn.ModuleDict):
    """`model.petl`: the methods of one model by name, and which one is active (attached), if any."""

    def __init__(self) -> None:
        super().__init__()
        self.active: str | None = None


def _methods(model: nn.Module) -> Methods | None:
    methods = model._modules.get(ATTRIBUTE)
    return methods if isinstance(methods, Methods) else None


def method_names(model: nn.Module) -> list[str]:
    """The names of the methods `model` carries, in the order they were applied."""
    methods = _methods(model)
    return list(methods) if methods is not None else []


def active_method(model: nn.Module) -> str | None:
    """The name of the active method, or None (no method, or all turned off)."""
    methods = _methods(model)
    return methods.active if methods is not None else None


def _named(model: nn.Module, name: str | None) -> PETLModules | None:
    methods = _methods(model)
    if methods is None:
        return None
    name = methods.active if name is None else name
    if name is None:
        return None
    if name not in methods:
        raise ValueError(f"this model has no petl method named {name!r}; it has {', '.join(map(repr, methods))}")
    return methods[name]


def config_of(model: nn.Module, name: str | None = None) -> PETLConfig | None:
    """The PETLConfig of the method `name` (default: the active one), or None when there is none."""
    modules = _named(model, name)
    return modules.config if modules is not None else None


def modules_of(model: nn.Module, name: str | None = None) -> PETLModules:
    """The modules of the method `name` (default: the active one)."""
    modules = _named(model, name)
    if modules is None:
        if method_names(model):
            raise ValueError(f"no petl method of this model is active (it has {', '.join(method_names(model))}): "
                             "petl.set_active(model, name) one, or name the one you mean")
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


def apply(model: nn.Module, variant_or_config: "str | PETLConfig | dict" = "mam", name: str = DEFAULT_NAME,
          **overrides) -> nn.Module:
    """Attach a method (a preset name, a dict or a PETLConfig, plus option overrides) to a stock model, in place,
    under `name`, and make it the active one.

    Every pretrained weight is frozen (unless full_finetune); the active method's modules and a newly initialised
    task head train. Returns the model.
    """
    config = resolve(variant_or_config, **overrides)
    if config.mh_adapter_query is None and config.attn_option == "cross_attn_relu":
        # The reference's own two choices: BART takes W_q · LN(h), mBART and RoBERTa the attention's query.
        arch = getattr(getattr(model, "config", None), "model_type", None)
        query = "layernorm" if arch in ("bart", "marian") else "attention"
        config = dataclasses.replace(config, mh_adapter_query=query)
    if not hasattr(model, "config"):
        raise TypeError(f"petl.apply needs a transformers PreTrainedModel, got {type(model).__name__}")
    if not isinstance(name, str) or not _NAME.match(name) or hasattr(Methods, name):
        raise ValueError(f"method name {name!r} is not valid: use letters, digits, '_' and '-' (up to 64, not "
                         f"starting with '-'), and not one of nn.Module's attribute names")
    names = method_names(model)
    if name in names:
        raise ValueError(f"this model already has a petl method named {name!r} ({config_of(model, name).variant}); "
                         f"apply another under a new name (petl.apply(model, cfg, name='b')), or petl.remove it "
                         "first")
    if names and (config.full_finetune or any(config_of(model, n).full_finetune for n in names)):
        raise ValueError("full fine-tuning trains the base model itself and cannot sit beside another method; "
                         "apply it to a fresh model")
    if config.prefix_attention:
        prefix.check_implementation(model)  # before the model runs once to find its sites
    sites = find_sites(model)
    deltas: dict[str, Delta] = {}
    deltas.update(prefix.build(model, sites, config))
    deltas.update(prompt.build(model, config))
    deltas.update(lora.build(sites, config))
    deltas.update(adapter.build(sites, config))
    deltas.update(bitfit.build(model, sites, config))
    methods = _methods(model)
    if methods is None:
        methods = Methods()
        methods.train(model.training)
        model.add_module(ATTRIBUTE, methods)
    modules = PETLModules(config, deltas)
    modules.train(model.training)  # the model's train() / eval() governs the method's modules from here on
    methods[name] = modules
    if callable(getattr(model, "save_pretrained", None)) and "save_pretrained" not in model.__dict__:
        model.save_pretrained = types.MethodType(_save_pretrained_with_method, model)
    if config.prefix_attention:
        prefix.use_prefix_attention(model)  # the model's own eager or SDPA attention, with the prefix
    _head_in_method_dtype(model, config)
    set_active(model, name)
    return model


def set_active(model: nn.Module, name: str | None) -> nn.Module:
    """Make the method `name` the active one (attached, trainable; the others off and frozen), or turn every
    method off with None. Refused while the active method is merged into the weights (petl.unmerge it first)."""
    methods = _methods(model)
    if methods is None:
        raise ValueError("this model has no petl method attached; call petl.apply(model, variant) first")
    if name is not None:
        _named(model, name)  # names the methods the model has when `name` is not one of them
    current = methods.active
    if current != name:
        if current is not None:
            if methods[current].merged:
                raise ValueError(f"the active method {current!r} is merged into the base weights; petl.unmerge "
                                 "it before switching, or the weights would keep its update")
            methods[current].detach()
        if name is not None:
            methods[name].attach()
        methods.active = name
    _set_trainable(model)
    return model


@contextlib.contextmanager
def disabled(model: nn.Module):
    """`with petl.disabled(model):` the base model alone (every method off); the active one is back after."""
    previous = active_method(model)
    set_active(model, None)
    try:
        yield model
    finally:
        set_active(model, previous)


def remove(model: nn.Module, name: str) -> nn.Module:
    """Take the method `name` off the model and delete its modules; with the last one, the model is stock again
    (a prefix method's attention function stays registered and computes stock attention)."""
    methods = _methods(model)
    if modules_of(model, name).merged:
        raise ValueError(f"method {name!r} is merged into the base weights: petl.unmerge it first, or petl.unload "
                         "to keep it folded in")
    if methods.active == name:
        set_active(model, None)
    del methods[name]
    if not len(methods):
        delattr(model, ATTRIBUTE)
        model.__dict__.pop("save_pretrained", None)
    return model


def _set_trainable(model: nn.Module) -> None:
    """Freeze everything but the active method, the task head and, for full fine-tuning, the base model."""
    config = config_of(model)
    active = modules_of(model) if config is not None else None
    head = {id(p) for p in head_parameters(model).values()}
    method = {id(p) for p in active.parameters()} if active is not None else set()
    full = config is not None and config.full_finetune
    for parameter in model.parameters():
        parameter.requires_grad_(full or id(parameter) in head or id(parameter) in method)


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
    it; from_pretrained alone would drop the method's tensors as unexpected. A model carrying several methods is
    refused: from_pretrained + petl.load would restore one."""
    from petl.io import save
    names = method_names(model)
    if len(names) > 1:
        raise ValueError(f"save_pretrained keeps one petl method and this model carries {len(names)} "
                         f"({', '.join(names)}): save each with petl.save(model, folder, name=...), or petl.remove "
                         "the others first")
    result = type(model).save_pretrained(model, save_directory, *args, **kwargs)
    if kwargs.get("is_main_process", True) and names:
        save(model, Path(save_directory) / SAVED_METHOD, name=names[0])
    return result


def unload(model: nn.Module) -> nn.Module:
    """After `merge`: take the method off, so that the model is a plain transformers model again (its state_dict
    holds no petl.* tensor, save_pretrained writes the stock model with the updates folded in). Refused while a
    delta is not merged, since unloading it would drop what it learned, and while other methods are on the model."""
    modules = modules_of(model)
    unmerged = sorted(name for name, delta in modules.deltas.items() if not getattr(delta, "merged", False))
    if unmerged:
        raise ValueError(f"unload drops the method: merge it first (petl.merge); not merged: {unmerged[:3]}"
                         f"{' ...' if len(unmerged) > 3 else ''}")
    others = [n for n in method_names(model) if n != active_method(model)]
    if others:
        raise ValueError(f"the model also carries the methods {', '.join(others)}: petl.remove them before unload")
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
