"""Parameter accounting as in the paper's Appendix B.

The paper counts the parameters stored after training, as a share of the pretrained model: the prefix MLP
re-parameterisation is folded away, and only the method's weight matrices count (biases, layer norms and a new
task head do not). `parameter_report` gives that number beside what actually trains and what `petl.save` stores.
"""

from __future__ import annotations

from torch import nn

from petl.core import ATTRIBUTE, config_of, head_parameters, modules_of


def _count(parameters) -> int:
    return sum(p.numel() for p in parameters)


def parameter_report(model: nn.Module) -> dict:
    """trainable (now), stored (after training), paper (Appendix B), head, backbone; *_pct are % of backbone."""
    config = config_of(model)
    head = head_parameters(model)
    head_ids = {id(p) for p in head.values()}
    modules = model._modules.get(ATTRIBUTE)
    method_ids = {id(p) for p in modules.parameters()} if modules is not None else set()
    backbone = _count(p for p in model.parameters() if id(p) not in head_ids and id(p) not in method_ids)
    head_count = _count(head.values())
    if config is None or config.full_finetune:
        stored, paper = backbone + head_count, backbone
    else:
        deltas = modules_of(model).deltas.values()
        stored = sum(d.stored_count() for d in deltas) + head_count
        paper = sum(d.paper_count() for d in deltas)
    report = dict(
        variant=config.variant if config is not None else None,
        trainable=_count(p for p in model.parameters() if p.requires_grad),
        stored=stored, paper=paper, head=head_count, backbone=backbone)
    for key in ("trainable", "stored", "paper"):
        report[f"{key}_pct"] = 100.0 * report[key] / backbone
    return report


def paper_pct_string(pct: float, rounding: str = "truncate") -> str:
    """The paper's one-decimal % column: Tables 3-6 and 12 truncate, the GLUE table rounds."""
    if rounding == "truncate":
        return f"{int(pct * 10 + 1e-9) / 10:.1f}"
    return f"{pct:.1f}"
