"""Measure how closely petl computes what the reference implementation computes, for the book's methods chapter.

    .venv/bin/python scripts/reference/agreement.py        # writes runs/reference/agreement.json

For every combination, architecture and mode of tests/reference_spec.py it runs petl exactly as
tests/test_reference_equivalence.py does and records the largest absolute and relative differences from the
reference's golden outputs (logits, loss, every gradient), with the preset that runs the same options, the commit
and the environment. The test asserts the tolerance; this file keeps the measured numbers.
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "runs" / "reference" / "agreement.json"
SIZES = ("attn_bn", "ffn_bn", "mid_dim", "lora_alpha", "lora_dropout", "variant")


CLOSE: list[bool] = []  # per compared tensor of the current case: within the test's tolerance


def _differences(actual, expected) -> tuple[float, float]:
    import numpy as np

    from test_reference_equivalence import ATOL, RTOL
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    CLOSE.append(bool(np.allclose(actual, expected, rtol=RTOL, atol=ATOL)))
    absolute = float(np.max(np.abs(actual - expected))) if actual.size else 0.0
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    return absolute, absolute / scale if scale else absolute


def _preset_for(options: dict) -> str | None:
    """The petl preset whose options equal the combination's, sizes aside."""
    import petl
    target = {k: v for k, v in petl.PETLConfig.from_dict(options).to_dict().items() if k not in SIZES}
    for name in sorted(petl.PRESETS):
        values = {k: v for k, v in petl.resolve(name).to_dict().items() if k not in SIZES}
        if values == target:
            return name
    return None


def main() -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    import numpy as np
    import torch

    import petl
    import reference_spec as spec
    import test_reference_equivalence as equivalence
    from petl import runs

    rows = []
    for arch, combo, mode in equivalence.CASES:
        CLOSE.clear()
        model, mapping, output, _ = equivalence._run_petl(arch, combo, mode)
        documented = (combo, arch) in spec.DOCUMENTED_DIFFERENCES
        golden = equivalence._golden(arch, combo, mode, patched=documented)
        worst = {"logits": _differences(output.logits.detach().numpy(), golden["logits"]),
                 "loss": _differences(output.loss.detach().numpy().reshape(1), golden["loss"])}
        grads = [(0.0, 0.0)]  # the bare model with no gradients compared
        grads += [_differences(mapping.gradient(n), g) for n, g in golden["grad"].items()]
        grads += [_differences(spec.sketch(n, mapping.gradient(n)), g) for n, g in golden["sketch"].items()]
        worst["gradients"] = (max(a for a, _ in grads), max(r for _, r in grads))
        options = spec.options(combo)
        rows.append(dict(arch=arch, combo=combo, mode=mode, preset=_preset_for(options),
                         options={k: v for k, v in options.items() if v != spec.DEFAULTS[k]},
                         what=spec.COMBOS[combo][2],
                         documented_difference=spec.DOCUMENTED_DIFFERENCES.get((combo, arch)),
                         gradients_compared=len(golden["grad"]) + len(golden["sketch"]),
                         max_abs={k: v[0] for k, v in worst.items()}, max_rel={k: v[1] for k, v in worst.items()},
                         agrees=all(CLOSE)))
        print(f"{arch:5s} {combo:18s} {mode:5s} logits {worst['logits'][0]:.1e} grads {worst['gradients'][0]:.1e}")
    record = dict(made_by="scripts/reference/agreement.py", dtype="float64",
                  reference_commit=equivalence.PROVENANCE["reference_commit"],
                  tolerance=dict(rtol=equivalence.RTOL, atol=equivalence.ATOL), git=runs.git_commit(),
                  versions=dict(python=platform.python_version(), torch=torch.__version__, numpy=np.__version__,
                                transformers=__import__("transformers").__version__, petl=petl.__name__),
                  computation_version=petl.config.COMPUTATION_VERSION, rows=rows)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {OUT.relative_to(ROOT)}: {sum(r['agrees'] for r in rows)} of {len(rows)} agree")


if __name__ == "__main__":
    main()
