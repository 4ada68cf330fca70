"""Save and load only what a method trained: its Delta modules and a new task head, plus the config as JSON.

Format 2 (petl_config.json "format": 2) stores the sha256 of the weights file, which `load` checks, so a damaged
file is refused rather than loaded; folders of format 1 (no checksum) still load, with a warning.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from petl.config import PETLConfig
from petl.core import (ATTRIBUTE, DEFAULT_NAME, apply, config_of, head_parameters, method_names, modules_of,
                       set_active)
from petl.files import sha256 as _sha256

FORMAT = 2
FORMATS = (1, 2)  # what load reads: 1 without a checksum of the weights, 2 with one
WEIGHTS, CONFIG = "petl_weights.safetensors", "petl_config.json"


def fingerprint(model: nn.Module) -> dict:
    """What a saved method must match: architecture and sizes of the base model."""
    config = model.config
    keys = ("model_type", "hidden_size", "d_model", "n_embd", "num_hidden_layers", "encoder_layers",
            "decoder_layers", "n_layer", "num_layers", "num_attention_heads", "num_key_value_heads",
            "intermediate_size", "encoder_ffn_dim", "vocab_size", "num_labels")
    found = {key: getattr(config, key, None) for key in keys}
    return {key: value for key, value in found.items() if isinstance(value, (int, str))}


def base_name(model: nn.Module) -> dict:
    """The base model's name or path (and hub revision where known), as from_pretrained was given it."""
    config = model.config
    return {"name_or_path": getattr(config, "_name_or_path", "") or None,
            "revision": getattr(config, "_commit_hash", None)}


def _same_base(saved: str | None, current: str | None) -> bool:
    """Names agree when either is unknown, or their last components agree (a hub id 'org/roberta-base' and a
    local copy '.../roberta-base', or one asset folder on two machines)."""
    if not saved or not current:
        return True
    return Path(str(saved).rstrip("/")).name == Path(str(current).rstrip("/")).name


def _tensors(model: nn.Module, name: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors petl.save writes: the method's state under 'petl.' (whatever its name on the model), the
    task head's under 'head.'; for full fine-tuning the whole model's under 'model.'."""
    modules = modules_of(model, name)
    if modules.config.full_finetune:
        named = {f"model.{n}": p for n, p in model.named_parameters() if not n.startswith(ATTRIBUTE + ".")}
    else:
        named = {f"{ATTRIBUTE}.{n}": t for n, t in modules.state_dict().items()}
        named.update({f"head.{n}": p for n, p in head_parameters(model).items()})
    return {name: t.detach().to("cpu").contiguous() for name, t in named.items()}


def save(model: nn.Module, directory: str | os.PathLike, peft: bool | None = None, name: str | None = None) -> Path:
    """Write the method's weights (safetensors) and config (JSON) to `directory`, atomically; readable by others
    (0755 / 0644), as a shared cluster needs. name: which of the model's methods (default: the active one).

    peft: also write PEFT's adapter_config.json + adapter_model.safetensors (petl.peft_format), so that
    ``PeftModel.from_pretrained(base, directory)`` computes the same: None where the method has an exact PEFT
    form (LoRA), True to require it (ValueError with the reason otherwise), False never.
    """
    from petl import peft_format
    if not method_names(model):
        raise ValueError("this model has no petl method attached; nothing to save")
    config = modules_of(model, name).config
    refusal = peft_format.export_refusal(config, model, name) if peft is not False else None
    if peft is True and refusal:
        raise ValueError(f"cannot write this method in PEFT's format: {refusal}")
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        os.chmod(staging, 0o755)  # mkdtemp makes it private to its owner
        save_file(_tensors(model, name), staging / WEIGHTS)
        meta = dict(format=FORMAT, petl=config.to_dict(), base_model=fingerprint(model),
                    base_model_name=base_name(model), weights_sha256=_sha256(staging / WEIGHTS))
        (staging / CONFIG).write_text(json.dumps(meta, indent=2, sort_keys=True))
        if peft is not False and refusal is None:
            peft_format.write(model, staging, name)
        for path in staging.iterdir():
            os.chmod(path, 0o644)  # safetensors writes 0600
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        old = None
        if target.exists():
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            os.replace(target, old)
        os.replace(staging, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _read_meta(directory: str | os.PathLike) -> dict:
    path = Path(directory) / CONFIG
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: {directory} is not a directory written by petl.save") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is damaged or not a petl config ({error})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path} is damaged or not a petl config (not a JSON object)")
    version = meta.get("format")
    if isinstance(version, bool) or version not in FORMATS:
        raise ValueError(f"{path}: format {version!r} is not one this petl reads ({', '.join(map(str, FORMATS))}); "
                         "a folder written by a newer petl needs that version, a damaged one must be saved again")
    return meta


def read_config(directory: str | os.PathLike, meta: dict | None = None) -> tuple[PETLConfig, dict]:
    """The PETLConfig and base-model fingerprint saved in `directory` (from its already read `meta`, if given)."""
    meta = _read_meta(directory) if meta is None else meta
    try:
        return PETLConfig.from_dict(meta["petl"]), meta["base_model"]
    except (KeyError, TypeError) as error:
        raise ValueError(f"{Path(directory) / CONFIG} is damaged or not a petl config ({error})") from None


def _load_weights(directory: str | os.PathLike, meta: dict) -> dict[str, torch.Tensor]:
    """The saved tensors, checked against the stored sha256 (format 2); a damaged file raises ValueError."""
    path = Path(directory) / WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the folder {directory} holds no petl weights")
    expected = meta.get("weights_sha256")
    if expected is None:
        warnings.warn(f"{directory} was saved in petl format {meta['format']}, without a checksum of its weights: "
                      "a damaged file cannot be told apart; save it again to add one", stacklevel=3)
    elif _sha256(path) != expected:
        raise ValueError(f"{path} is damaged: its sha256 differs from the one petl.save stored; restore the folder "
                         "or train and save the method again")
    try:
        return load_file(path)
    except Exception as error:  # noqa: BLE001 - safetensors raises its own error type for a truncated file
        raise ValueError(f"{path} cannot be read as safetensors ({error}); the file is damaged or truncated: "
                         "restore the folder or train and save the method again") from None


def load(model: nn.Module, directory: str | os.PathLike, check_base: bool = True,
         name: str = DEFAULT_NAME) -> nn.Module:
    """Attach (if needed) and load a saved method into a stock model of the same architecture and size, and of
    the same name (check_base=False accepts another name: the same weights under another name, or on purpose
    another base of those sizes), as the method `name` of the model, which becomes the active one. A folder that
    PEFT wrote (LoRA on exactly petl's sites) loads too, and so does a save_pretrained folder of a petl model
    (its method is in <folder>/petl)."""
    from petl import peft_format
    from petl.core import SAVED_METHOD
    if not (Path(directory) / CONFIG).is_file() and (Path(directory) / SAVED_METHOD / CONFIG).is_file():
        directory = Path(directory) / SAVED_METHOD  # a save_pretrained folder: the method is in its petl/
    if not (Path(directory) / CONFIG).is_file() and peft_format.is_peft_folder(directory):
        return peft_format.load(model, directory, name)
    meta = _read_meta(directory)
    config, saved = read_config(directory, meta)
    current = fingerprint(model)
    differences = {k: (saved.get(k), current.get(k)) for k in set(saved) | set(current) if saved.get(k) != current.get(k)}
    if differences:
        detail = ", ".join(f"{k}: saved {a!r} vs model {b!r}" for k, a, b in
                           sorted((k, *v) for k, v in differences.items()))
        raise ValueError(f"the method in {directory} was trained on another base model ({detail})")
    saved_name = (meta.get("base_model_name") or {}).get("name_or_path")
    current_name = base_name(model)["name_or_path"]
    if check_base and not _same_base(saved_name, current_name):
        raise ValueError(f"the method in {directory} was trained on the base model {saved_name!r}, and this model "
                         f"is {current_name!r}; load it into that model, or pass check_base=False if this is the "
                         "same model under another name")
    tensors = _load_weights(directory, meta)  # before attaching: a damaged folder leaves the model as it was
    if name not in method_names(model):
        apply(model, config, name=name)
    elif config_of(model, name) != config:
        raise ValueError(f"this model already carries a different petl method named {name!r} "
                         f"({config_of(model, name).variant}); load under another name (petl.load(model, folder, "
                         "name='b')) or into a fresh model")
    else:
        set_active(model, name)
    if config.full_finetune:
        state = {n[len("model."):]: t for n, t in tensors.items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected:
            raise ValueError(f"{directory} holds weights this model does not have: {unexpected[:5]}")
        return model
    modules = modules_of(model, name)
    state = {n[len(ATTRIBUTE) + 1:]: t for n, t in tensors.items() if n.startswith(ATTRIBUTE + ".")}
    try:
        modules.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(f"the method in {directory} does not fit this model: {error}") from None
    head = head_parameters(model)
    saved_head = {n[len("head."):]: t for n, t in tensors.items() if n.startswith("head.")}
    if set(saved_head) != set(head):
        raise ValueError(f"task head mismatch: saved {sorted(saved_head)}, model has {sorted(head)}")
    with torch.no_grad():
        for name, tensor in saved_head.items():
            if head[name].shape != tensor.shape:
                raise ValueError(f"task head {name}: saved shape {tuple(tensor.shape)}, model {tuple(head[name].shape)}")
            head[name].copy_(tensor)
    return model
