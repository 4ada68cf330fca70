"""PEFT's folder format for the methods PEFT computes identically: LoRA on attention (W_q, W_v) and on the FFN.

`petl.save` writes ``adapter_config.json`` + ``adapter_model.safetensors`` beside its own files when the method can
be expressed there, so ``PeftModel.from_pretrained(base, folder)`` gives the same logits; `petl.load` reads such a
folder (one written by PEFT too) when its LoRA targets are exactly petl's sites. Everything else is refused with
the reason (`export_refusal`): prompt tuning, because PEFT gives the prompt positions 0..l-1 and shifts the tokens,
where the reference (and petl) gives the prompt no position; prefix tuning, adapters and BitFit, which PEFT
computes otherwise or not at all; LoRA on a fused or Conv1D projection (GPT-2), which PEFT's LoRA cannot slice.

PEFT need not be installed: the format is JSON and safetensors.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import torch
from torch import nn

from petl.config import PETLConfig
from petl.core import DEFAULT_NAME, apply, head_parameters, method_names, modules_of
from petl.sites import find_sites

CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
PREFIX = "base_model.model."  # PEFT's names of the wrapped model's modules


def export_refusal(config: PETLConfig, model: nn.Module | None = None, name: str | None = None) -> str | None:
    """Why the method cannot be written in PEFT's format, or None when it can."""
    if config.full_finetune:
        return "full fine-tuning is not an adapter"
    if config.attn_mode not in ("none", "lora") or config.ffn_mode not in ("none", "lora"):
        if config.attn_mode == "prompt_tuning":
            return ("PEFT's prompt tuning gives the prompt positions 0..l-1 and shifts the tokens; the reference's "
                    "(and petl's) prompt has no position")
        return (f"PEFT has no method that computes attn_mode={config.attn_mode!r}, ffn_mode={config.ffn_mode!r} as "
                "the reference does; only LoRA is exported")
    if config.attn_mode == config.ffn_mode == "none":
        return "the method modifies nothing"
    if model is not None:
        for delta in modules_of(model, name).deltas.values():
            projection = delta.projection[0]
            if projection.is_slice or not isinstance(projection.module, nn.Linear):
                return (f"LoRA on {type(projection.module).__name__}"
                        f"{' slice' if projection.is_slice else ''} (a fused or Conv1D projection) has no "
                        "exact PEFT form")
    return None


def _module_names(model: nn.Module) -> dict[int, str]:
    return {id(module): name for name, module in model.named_modules()}


def _head_modules(model: nn.Module) -> list[str]:
    return sorted({name.rsplit(".", 1)[0] for name in head_parameters(model) if "." in name})


def write(model: nn.Module, folder: Path, name: str | None = None) -> None:
    """PEFT's two files for the model's LoRA method `name` (default: the active one; and the task head, as
    modules_to_save) into `folder`."""
    from safetensors.torch import save_file
    modules = modules_of(model, name)
    config = modules.config
    names = _module_names(model)
    tensors, targets = {}, []
    for delta in modules.deltas.values():
        path = names[id(delta.projection[0].module)]
        targets.append(path)
        tensors[f"{PREFIX}{path}.lora_A.weight"] = delta.down.weight
        tensors[f"{PREFIX}{path}.lora_B.weight"] = delta.up.weight
    for name, parameter in head_parameters(model).items():
        tensors[f"{PREFIX}{name}"] = parameter
    rank = config.attn_bn if config.attn_mode == "lora" else config.ffn_bn
    rank_pattern = {}
    if config.attn_mode == config.ffn_mode == "lora" and config.attn_bn != config.ffn_bn:
        ffn = {names[id(linear)] for site in find_sites(model).ffn for linear in site.linears}
        rank_pattern = {path: (config.ffn_bn if path in ffn else config.attn_bn) for path in targets}
    meta = dict(peft_type="LORA", task_type=None, r=rank, lora_alpha=config.lora_alpha,
                lora_dropout=config.lora_dropout, target_modules=sorted(targets), bias="none",
                fan_in_fan_out=False, init_lora_weights=True, use_rslora=False, use_dora=False,
                rank_pattern=rank_pattern, alpha_pattern={}, modules_to_save=_head_modules(model) or None,
                base_model_name_or_path=getattr(model.config, "_name_or_path", None) or None,
                inference_mode=True, written_by="petl")
    save_file({k: t.detach().to("cpu").contiguous() for k, t in tensors.items()}, str(folder / WEIGHTS))
    (folder / CONFIG).write_text(json.dumps(meta, indent=2, sort_keys=True))


def is_peft_folder(directory: str | Path) -> bool:
    return (Path(directory) / CONFIG).is_file()


def _targeted(model: nn.Module, targets) -> set[str]:
    """The Linear modules PEFT's target_modules select (a regex string, or names matched whole or as a suffix)."""
    found = set()
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        if isinstance(targets, str):
            hit = re.fullmatch(targets, name) is not None
        else:
            hit = any(name == t or name.endswith("." + t) for t in targets)
        if hit:
            found.add(name)
    return found


def read_config(model: nn.Module, directory: str | Path) -> PETLConfig:
    """The PETLConfig whose LoRA is exactly the PEFT folder's, or ValueError naming what petl cannot compute."""
    path = Path(directory) / CONFIG
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{path} is damaged or not a PEFT config ({error})") from None
    where = f"the PEFT folder {directory}"
    if meta.get("peft_type") != "LORA":
        raise ValueError(f"{where} holds a {meta.get('peft_type')!r} adapter; petl reads PEFT's LORA folders only")
    unsupported = {k: meta.get(k) for k in ("use_dora", "use_rslora", "fan_in_fan_out", "layers_to_transform",
                                            "layer_replication", "alpha_pattern") if meta.get(k)}
    if meta.get("bias", "none") != "none":
        unsupported["bias"] = meta["bias"]
    if unsupported:
        raise ValueError(f"{where} uses LoRA options petl does not compute: {unsupported}")
    sites = find_sites(model)
    names = _module_names(model)
    attention = {names[id(getattr(s, p).module)] for s in sites.attention for p in ("q", "v")}
    ffn = {names[id(linear)] for s in sites.ffn for linear in s.linears}
    targeted = _targeted(model, meta.get("target_modules") or [])
    if targeted not in (attention, ffn, attention | ffn):
        raise ValueError(f"{where} puts LoRA on {len(targeted)} modules ({sorted(targeted)[:4]}...); petl's LoRA is "
                         f"W_q and W_v of every attention ({len(attention)} modules), every FFN matrix "
                         f"({len(ffn)}), or both")
    ranks = {t: meta.get("rank_pattern", {}).get(t, meta["r"]) for t in targeted}
    attn_ranks, ffn_ranks = {ranks[t] for t in targeted & attention}, {ranks[t] for t in targeted & ffn}
    if len(attn_ranks) > 1 or len(ffn_ranks) > 1:
        raise ValueError(f"{where} gives its LoRA modules different ranks; petl has one rank at attention and one "
                         "at the FFN")
    return PETLConfig(attn_mode="lora" if attn_ranks else "none", attn_bn=attn_ranks.pop() if attn_ranks else 200,
                      ffn_mode="lora" if ffn_ranks else "none", ffn_bn=ffn_ranks.pop() if ffn_ranks else 512,
                      lora_alpha=float(meta["lora_alpha"]), lora_dropout=float(meta.get("lora_dropout") or 0.0))


def load(model: nn.Module, directory: str | Path, name: str = DEFAULT_NAME) -> nn.Module:
    """Attach the PEFT folder's LoRA to a stock model with petl, as the method `name`, and load its weights (and
    task head)."""
    from safetensors.torch import load_file
    config = read_config(model, directory)
    try:
        tensors = load_file(Path(directory) / WEIGHTS)
    except Exception as error:  # noqa: BLE001 - safetensors raises its own error type
        raise ValueError(f"{Path(directory) / WEIGHTS} cannot be read ({error})") from None
    tensors = {k[len(PREFIX):] if k.startswith(PREFIX) else k: t for k, t in tensors.items()}
    tensors = {re.sub(r"\.lora_([AB])\.default\.weight$", r".lora_\1.weight", k): t for k, t in tensors.items()}
    if name in method_names(model):
        raise ValueError(f"this model already carries a petl method named {name!r}; load the PEFT folder under "
                         "another name, or into a fresh model")
    apply(model, config, name=name)
    names = _module_names(model)
    with torch.no_grad():
        for delta in modules_of(model, name).deltas.values():
            path = names[id(delta.projection[0].module)]
            for side, part in (("A", delta.down), ("B", delta.up)):
                key = f"{path}.lora_{side}.weight"
                if key not in tensors or tensors[key].shape != part.weight.shape:
                    raise ValueError(f"{directory}: {key} is missing or of another shape than this model needs")
                part.weight.copy_(tensors.pop(key))
        head = head_parameters(model)
        for name, parameter in head.items():
            for key in (name, re.sub(r"^(.*)\.(\w+)$", r"\1.modules_to_save.default.\2", name)):
                if key in tensors:
                    parameter.copy_(tensors.pop(key))
                    head = {n: p for n, p in head.items() if n != name}
                    break
    if tensors:
        raise ValueError(f"{directory} holds tensors this model has no place for: {sorted(tensors)[:5]}")
    if head:
        warnings.warn(f"{directory} saves no task head ({', '.join(sorted(head))}): it stays as initialised",
                      stacklevel=3)
    return model
