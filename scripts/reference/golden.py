"""Write the reference implementation's golden outputs for tests/test_reference_equivalence.py.

Run inside the environment of scripts/reference/setup_env.sh (the fork of transformers 4.9 that is the paper's
reference code), pointing at the same checkout:

    .venv-ref/bin/python scripts/reference/golden.py /path/to/unify-parameter-efficient-tuning

For every combination and architecture of tests/reference_spec.py and both modes (eval; train with every dropout
replaced by the spec's deterministic one), it builds the fork's tiny model in float64 (BART and mBART wrapped in the
fork's PETLEncDecModel as its run_summarization.py does, RoBERTa in PETLEncModel as its run_glue.py does), sets
every parameter to the spec's seeded value, runs one forward and backward pass on the spec's inputs and stores the logits, the loss and
the gradient of every trainable parameter in tests/fixtures/reference/<arch>.safetensors, with the provenance in
tests/fixtures/reference/provenance.json. Nothing of the reference's code is copied: it is imported from the
checkout.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import platform
import sys
from argparse import Namespace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "reference"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkout", type=Path, help="local checkout of jxhe/unify-parameter-efficient-tuning")
    parser.add_argument("--commit", default=None, help="the checkout's commit, if it is not a git work tree")
    args = parser.parse_args()
    sys.path.insert(0, str(args.checkout))  # the fork's own petl/ package (PETLEncDecModel, the prefix MLPs)
    sys.path.insert(0, str(ROOT / "tests"))
    import numpy as np
    import torch
    import transformers
    from safetensors.numpy import save_file

    import reference_spec as spec

    if not transformers.__version__.startswith("4.9"):
        sys.exit(f"error: this environment has transformers {transformers.__version__}, not the reference fork "
                 "(4.9.0.dev0); run scripts/reference/setup_env.sh first")
    commit = args.commit or _git_commit(args.checkout) or spec.REFERENCE_COMMIT
    OUT.mkdir(parents=True, exist_ok=True)
    provenance = dict(
        reference="github.com/jxhe/unify-parameter-efficient-tuning", reference_commit=commit,
        made_by="scripts/reference/golden.py", how_to_regenerate=(
            "scripts/reference/setup_env.sh CHECKOUT && .venv-ref/bin/python scripts/reference/golden.py CHECKOUT"),
        environment=dict(python=platform.python_version(), torch=torch.__version__,
                         transformers=transformers.__version__, numpy=np.__version__),
        dtype="float64", seed=spec.SEED, models=spec.MODELS, dropout_in_train_mode=spec.DROPOUT,
        documented_differences={f"{c}/{a}": why for (c, a), why in spec.DOCUMENTED_DIFFERENCES.items()},
        sketch=dict(over=spec.SKETCH_OVER, size=spec.SKETCH_SIZE), combos={}, files={})
    torch.set_default_dtype(torch.float64)
    for arch in spec.MODELS:
        tensors: dict[str, np.ndarray] = {}
        for combo, (_, archs, what) in spec.COMBOS.items():
            if arch not in archs:
                continue
            entry = provenance["combos"].setdefault(combo, dict(options=spec.options(combo), what=what, runs={}))
            for mode in spec.MODES:
                variants = [("", False)]
                if (combo, arch) in spec.DOCUMENTED_DIFFERENCES:
                    variants.append(("patched/", True))
                run = entry["runs"].setdefault(arch, dict(modes=list(spec.MODES)))
                for tag, patched in variants:
                    key = f"{combo}/{mode}/{tag}"
                    try:
                        out, names = _run(spec, arch, combo, mode, patched)
                    except Exception as error:  # a documented defect that stops the reference
                        if patched or (combo, arch) not in spec.DOCUMENTED_DIFFERENCES:
                            raise
                        run.setdefault("reference_error", {})[mode] = f"{type(error).__name__}: {error}"
                        print(f"{arch:7s} {combo:18s} {mode:5s} reference fails: {error}", flush=True)
                        continue
                    tensors[key + "logits"] = out["logits"]
                    tensors[key + "loss"] = out["loss"]
                    for name, grad in out["grads"].items():
                        kind, values = spec.gradient_record(name, grad)
                        tensors[f"{key}{kind}/{name}"] = values
                    run.update(parameters=names, trainable=sorted(out["grads"]), unused=out["unused"])
                    print(f"{arch:7s} {combo:18s} {mode:5s} {tag or 'as is':8s} loss {float(out['loss'][0]):.12f}",
                          flush=True)
        path = OUT / f"{arch}.safetensors"
        save_file(tensors, str(path), metadata={"reference_commit": commit})
        provenance["files"][path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    (OUT / "provenance.json").write_text(json.dumps(provenance, indent=1, sort_keys=True) + "\n")
    print(f"wrote {OUT}")


def _git_commit(path: Path) -> str | None:
    import subprocess
    result = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else None


def _reference_name(name: str) -> str:
    return name[len("pretrained_model."):] if name.startswith("pretrained_model.") else name


def _run(spec, arch: str, combo: str, mode: str, patched: bool):
    import numpy as np
    import torch
    import transformers

    tune = spec.options(combo)
    classes = dict(bart=("BartConfig", "BartForConditionalGeneration"),
                   mbart=("MBartConfig", "MBartForConditionalGeneration"),
                   roberta=("RobertaConfig", "RobertaForSequenceClassification"))[arch]
    config = getattr(transformers, classes[0])(**spec.MODELS[arch], **spec.dropout(arch, mode))
    for key, value in tune.items():  # as the fork's run scripts put TuneArguments into the config
        setattr(config, key, value)
    config.unfreeze_params, config.load_path = "ef_", ""
    config.max_source_length, config.max_target_length = 16, 16
    config.layer_norm_after = False  # read by the RoBERTa prefix branch; the fork's options never set it
    if mode == "eval":
        config.lora_dropout = 0.0
    torch.manual_seed(spec.SEED)
    model = getattr(transformers, classes[1])(config)
    wrapped = tune["attn_mode"] != "none" or tune["ffn_mode"] != "none"
    if wrapped:  # the fork's petl/, not this project's
        from petl.petl_enc_model import PETLEncModel
        from petl.petl_encdec_model import PETLEncDecModel
        args = Namespace(**{**tune, "lora_dropout": config.lora_dropout}, unfreeze_params="ef_", load_path="")
        model = (PETLEncDecModel if arch in spec.SEQ2SEQ else PETLEncModel)(config, args, model)
    names = {}
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            reference = _reference_name(name)
            parameter.copy_(torch.from_numpy(spec.parameter_value(reference, parameter.shape)))
            names[reference] = list(parameter.shape)
    if not wrapped:  # the bare model: nothing trains, but its input gradients still check the whole graph
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        model.get_input_embeddings().weight.requires_grad_(True)
    model.train(mode == "train")
    batch = {k: torch.from_numpy(v) for k, v in spec.inputs(arch).items()}
    with _deterministic_dropout(spec), _patched(patched, arch):
        output = model(**batch)
        output.loss.backward()
    grads = {_reference_name(n): p.grad.numpy().copy() for n, p in model.named_parameters()
             if p.requires_grad and p.grad is not None}
    # Parameters the reference builds and marks trainable but never uses (mBART's cross_attn_relu LayerNorm,
    # RoBERTa's spec.ROBERTA_UNUSED).
    unused = sorted(_reference_name(n) for n, p in model.named_parameters() if p.requires_grad and p.grad is None)
    return dict(logits=output.logits.detach().numpy().copy(), unused=unused,
                loss=np.asarray(output.loss.detach().numpy()).reshape(1), grads=grads), names


@contextlib.contextmanager
def _deterministic_dropout(spec):
    import torch
    original = torch.nn.functional.dropout
    torch.nn.functional.dropout = spec.deterministic_dropout
    try:
        yield
    finally:
        torch.nn.functional.dropout = original


@contextlib.contextmanager
def _patched(active: bool, arch: str):
    """The reference with its documented defects fixed (tests/reference_spec.py DOCUMENTED_DIFFERENCES):
    - its adapter normalises the output before scaling (LN(up)·s), as the paper intends, instead of LN(up·s);
    - its RoBERTa gate_add reads the key length from the sequence axis, gates against the scaled attention
      logits in their 4-d shape, and keeps the gated output (BART's gate_add, the paper's Eq. 7)."""
    if not active:
        yield
        return
    from petl import petl_factory  # the fork's
    from transformers.models.roberta import modeling_roberta
    original = petl_factory.Adapter_Layer.forward, modeling_roberta.RobertaSelfAttention.forward

    def forward(self, x, add_residual=True, residual=None):
        if self.adapter_layernorm_option != "out":
            return original[0](self, x, add_residual, residual)
        import torch.nn as nn
        residual = x if residual is None else residual
        up = self.up_proj(nn.functional.dropout(self.non_linear_func(self.down_proj(x)), p=self.dropout,
                                                training=self.training))
        up = self.adapter_layer_norm_before(up) * self.scale
        return up + residual if add_residual else up

    petl_factory.Adapter_Layer.forward = forward
    if arch == "roberta":
        modeling_roberta.RobertaSelfAttention.forward = _roberta_gate_fixed(modeling_roberta)
    try:
        yield
    finally:
        petl_factory.Adapter_Layer.forward, modeling_roberta.RobertaSelfAttention.forward = original


#: (the reference's statement, the fixed one) in RobertaSelfAttention.forward; each must occur exactly once.
_ROBERTA_GATE_FIXES = (
    ("src_len = key_layer.size(1)", "src_len = key_layer.size(2)"),
    ("tgt_len, src_len) + attention_mask",
     "tgt_len, src_len) / math.sqrt(self.attention_head_size) + attention_mask"),
    ("attention_scores_local = attention_scores_local.view(bsz * self.num_attention_heads, tgt_len, src_len)",
     "pass"),
    ("attn_output = context_layer * w_attn", "context_layer = context_layer * w_attn"),
)


def _roberta_gate_fixed(module):
    """RobertaSelfAttention.forward of the fork, recompiled from its own source with _ROBERTA_GATE_FIXES."""
    import inspect
    import textwrap
    source = textwrap.dedent(inspect.getsource(module.RobertaSelfAttention.forward))
    for old, new in _ROBERTA_GATE_FIXES:
        if source.count(old) != 1:
            raise RuntimeError(f"the reference's RoBERTa attention no longer contains {old!r} once; "
                               "update _ROBERTA_GATE_FIXES")
        source = source.replace(old, new)
    namespace: dict = {}
    exec(compile(source, inspect.getsourcefile(module) + " (gate_add fixed)", "exec"), vars(module), namespace)
    return namespace["forward"]


if __name__ == "__main__":
    main()
