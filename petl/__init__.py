"""petl: the unified view of parameter-efficient transfer learning (He et al., ICLR 2022) on stock transformers.

    import petl
    model = petl.apply(model, "mam")          # or a PETLConfig, or a preset plus option overrides
    petl.parameter_report(model)
    petl.save(model, "out/"); petl.load(fresh_model, "out/")

Names are imported on first use, so `python -m petl.assets` does not pay for importing torch.
"""

from importlib import import_module

_EXPORTS = {
    "PETLConfig": "petl.config", "PRESETS": "petl.config", "resolve": "petl.config",
    "apply": "petl.core", "config_of": "petl.core", "merge": "petl.core", "unmerge": "petl.core",
    "unload": "petl.core", "set_active": "petl.core", "disabled": "petl.core", "remove": "petl.core",
    "method_names": "petl.core", "active_method": "petl.core",
    "MethodTrainer": "petl.trainer", "parameter_report": "petl.accounting", "save": "petl.io", "load": "petl.io",
}

__all__ = sorted([*_EXPORTS, "VARIANTS"])


def __getattr__(name: str):
    if name == "VARIANTS":
        return tuple(sorted(import_module("petl.config").PRESETS))
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'petl' has no attribute {name!r}")


def __dir__():
    return __all__
