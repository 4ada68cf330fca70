"""petl: the unified view of parameter-efficient transfer learning (He et al., ICLR 2022) on stock transformers.

    import petl
    model = petl.apply(model, "mam")          # or a PETLConfig, or a preset plus option overrides
    petl.parameter_report(model)
    petl.save(model, "out/"); petl.load(fresh_model, "out/")
"""

from petl.accounting import parameter_report
from petl.config import PETLConfig, PRESETS, resolve
from petl.core import apply, config_of, merge, unmerge
from petl.io import load, save

VARIANTS = tuple(sorted(PRESETS))

__all__ = ["PETLConfig", "PRESETS", "VARIANTS", "apply", "config_of", "load", "merge", "parameter_report",
           "resolve", "save", "unmerge"]
