"""The methods measured, at named sizes, and how each one's model and training step are built.

Every method model shares the frozen backbone weights of one template model (a deep copy whose memo maps each
frozen parameter to itself), so a whole round of methods fits in memory; full fine-tuning gets its own copy.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

import petl
from petl.core import head_parameters

#: The paper's GLUE sizes (RoBERTa-base, Table 2 at ~0.5%): prefix / prompt length l=16, bottleneck and rank
#: r=16, MAM = prefix l=16 + scaled parallel FFN adapter r=16, s=2 (the released GLUE script). LoRA keeps the
#: preset's scale s = alpha / r = 4 (alpha = 64), and PEFT's LoRA gets the same rank, alpha and targets.
GLUE_SIZES = dict(length=16, rank=16, mam_scalar=2.0)

FLOOR, FLOOR_AGAIN, FLOOR_PROMPT = "floor", "floor_again", "floor_prompt"


@dataclass
class MethodSpec:
    """One measured method: how to build it, what it is compared against."""

    name: str
    kind: str  # 'floor' | 'full' | 'petl' | 'peft'
    petl_config: dict | None = None  # resolved PETLConfig as a dict (kind 'petl' / 'full')
    peft: dict | None = None  # PEFT config class name and arguments (kind 'peft')
    extra_length: int = 0  # the floor at the lengthened input (prompt tuning's reference)
    reference: str = FLOOR  # the floor this method's step is divided by
    peer: str | None = None  # PEFT's implementation of the same method (paired ratio ours / theirs)
    families: tuple = ("encoder", "decoder", "seq2seq")
    note: str = ""
    extra: dict = field(default_factory=dict)

    def describe(self) -> dict:
        return dict(kind=self.kind, petl_config=self.petl_config, peft=self.peft, extra_length=self.extra_length,
                    reference=self.reference, peer=self.peer, note=self.note)


def _petl(name: str, variant: str, **overrides) -> MethodSpec:
    return MethodSpec(name, "petl", petl_config=petl.resolve(variant, **overrides).to_dict())


def glue_methods(sizes: dict = GLUE_SIZES) -> dict[str, MethodSpec]:
    """Every CPU method at the paper's GLUE sizes, keyed by name, in measuring order."""
    l, r = sizes["length"], sizes["rank"]
    lora = petl.resolve("lora", attn_bn=r)
    specs = [
        MethodSpec(FLOOR, "floor", note="no added parameters, everything frozen, gradients flow to inputs_embeds"),
        MethodSpec(FLOOR_AGAIN, "floor", reference=FLOOR,
                   note="the floor timed a second time in every round: the A/A control, whose ratio to the floor "
                        "shows the run's noise"),
        MethodSpec(FLOOR_PROMPT, "floor", extra_length=l, reference=FLOOR,
                   note=f"the floor at the input lengthened by the prompt (l={l}); prompt tuning's reference"),
        MethodSpec("full", "full", petl_config=petl.resolve("full").to_dict()),
        _petl("bitfit", "bitfit"),
        _petl("prompt_tuning", "prompt_tuning", attn_bn=l),
        _petl("prefix", "prefix", attn_bn=l),
        _petl("prefix_nomlp", "prefix_nomlp", attn_bn=l),
        _petl("lora", "lora", attn_bn=r),
        _petl("houlsby", "houlsby", attn_bn=r, ffn_bn=r),
        _petl("pa_ffn", "pa_ffn", ffn_bn=r),
        _petl("scaled_pa", "scaled_pa", ffn_bn=r),
        _petl("mam", "mam", attn_bn=l, ffn_bn=r, ffn_adapter_scalar=sizes["mam_scalar"]),
        _petl("mam_nomlp", "mam", attn_mode="prefix_nomlp", attn_bn=l, ffn_bn=r,
              ffn_adapter_scalar=sizes["mam_scalar"]),
        MethodSpec("peft_lora", "peft", peft=dict(type="LoraConfig", r=r, lora_alpha=lora.lora_alpha,
                                                  lora_dropout=0.0)),
        MethodSpec("peft_prefix", "peft", peft=dict(type="PrefixTuningConfig", num_virtual_tokens=l),
                   note="PEFT's default: prefix learned directly (no MLP); compare with prefix_nomlp"),
        MethodSpec("peft_prompt", "peft", peft=dict(type="PromptTuningConfig", num_virtual_tokens=l),
                   reference=FLOOR_PROMPT),
    ]
    out = {s.name: s for s in specs}
    out["prompt_tuning"].reference = FLOOR_PROMPT
    out["mam_nomlp"].note = ("MAM with its prefix learned directly: the same trained function, without the "
                             "re-parameterisation MLP's training state")
    out["lora"].peer = "peft_lora"
    out["prefix_nomlp"].peer = "peft_prefix"
    out["prompt_tuning"].peer = "peft_prompt"
    return out


def paper_methods() -> dict[str, MethodSpec]:
    """The GPU set at the paper's BART-large (XSum) sizes: the presets as they are."""
    specs = [MethodSpec(FLOOR, "floor"), MethodSpec("full", "full", petl_config=petl.resolve("full").to_dict())]
    specs += [_petl(v, v) for v in ("prefix", "lora", "pa_ffn", "mam")]
    return {s.name: s for s in specs}


# ------------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------------

def share_frozen(template: nn.Module) -> nn.Module:
    """A copy of `template` whose backbone parameters ARE the template's (shared, frozen); the task head is new."""
    head = {id(p) for p in head_parameters(template).values()}
    memo = {id(p): p for p in template.parameters() if id(p) not in head}
    return copy.deepcopy(template, memo)


class Unsupported(RuntimeError):
    """The method cannot be built on this model (recorded, not fatal)."""


def _peft_model(spec: MethodSpec, model: nn.Module, family: str) -> nn.Module:
    import peft
    args = dict(spec.peft)
    cls = getattr(peft, args.pop("type"))
    task = {"encoder": "SEQ_CLS", "decoder": "CAUSAL_LM", "seq2seq": "SEQ_2_SEQ_LM"}[family]
    if cls is peft.LoraConfig:
        args["target_modules"] = (["query", "value"] if model.config.model_type in ("bert", "roberta")
                                  else ["q_proj", "v_proj"])
    return peft.get_peft_model(model, cls(task_type=task, **args))


def build_model(spec: MethodSpec, template: nn.Module, family: str) -> nn.Module:
    """The model of one method (train mode); raises Unsupported where the method cannot apply."""
    if family not in spec.families:
        raise Unsupported(f"{spec.name} is not measured on {family} models")
    if spec.kind == "full":
        model = copy.deepcopy(template)
        petl.apply(model, petl.PETLConfig.from_dict(spec.petl_config))
    elif spec.kind == "floor":
        model = share_frozen(template)
        model.requires_grad_(False)
    elif spec.kind == "petl":
        model = share_frozen(template)
        try:
            petl.apply(model, petl.PETLConfig.from_dict(spec.petl_config))
        except ValueError as error:  # e.g. BitFit on a model without biases
            raise Unsupported(str(error)) from error
    elif spec.kind == "peft":
        try:
            model = _peft_model(spec, share_frozen(template), family)
        except Exception as error:  # noqa: BLE001 - a peer library failing is a result to record
            raise Unsupported(f"PEFT failed to build: {type(error).__name__}: {error}") from error
    else:
        raise ValueError(f"unknown method kind {spec.kind!r}")
    return model.train()


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer | None:
    params = trainable_parameters(model)
    return torch.optim.AdamW(params, lr=1e-5, weight_decay=0.01) if params else None


def floor_inputs(model: nn.Module, batch: dict, family: str) -> dict:
    """The batch as input embeddings that require gradients (and decoder input embeddings for seq2seq)."""
    if family == "seq2seq":
        from transformers.models.bart.modeling_bart import shift_tokens_right
        config = model.config
        decoder_ids = shift_tokens_right(batch["labels"], config.pad_token_id, config.decoder_start_token_id)
        encoder_embeds = model.get_encoder().embed_tokens(batch["input_ids"]).detach().requires_grad_()
        decoder_embeds = model.get_decoder().embed_tokens(decoder_ids).detach().requires_grad_()
        return dict(inputs_embeds=encoder_embeds, decoder_inputs_embeds=decoder_embeds,
                    attention_mask=batch["attention_mask"], labels=batch["labels"])
    embeds = model.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_()
    return dict(inputs_embeds=embeds, attention_mask=batch["attention_mask"], labels=batch["labels"])


@dataclass
class Prepared:
    """A built method: its model, the batch it trains on, its optimizer, and its parameter counts."""

    spec: MethodSpec
    model: nn.Module
    batch: dict
    optimizer: torch.optim.Optimizer | None
    family: str
    autocast: torch.dtype | None = None
    flops: int | None = None  # per training step, counted in the first warm-up step
    elementwise_bytes: int | None = None  # read and written by non-matmul ops per step, counted with the FLOPs

    def step(self) -> float:
        """One training step: forward, backward, optimizer step over the trainable parameters. Returns the loss."""
        inputs = floor_inputs(self.model, self.batch, self.family) if self.spec.kind == "floor" else self.batch
        device_type = next(self.model.parameters()).device.type
        with torch.autocast(device_type, dtype=self.autocast, enabled=self.autocast is not None):
            loss = self.model(**inputs).loss
        loss.backward()
        if self.optimizer is not None:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def counts(self) -> dict:
        trainable = sum(p.numel() for p in trainable_parameters(self.model))
        out = dict(trainable=trainable)
        if self.spec.kind in ("petl", "full"):
            report = petl.parameter_report(self.model)
            out.update({k: report[k] for k in ("stored", "paper", "backbone", "paper_pct")})
        return out


def prepare(spec: MethodSpec, template: nn.Module, shape, device="cpu", autocast=None) -> Prepared:
    """Build one method's model, batch and optimizer on `template` (a Shape's frozen stock model)."""
    model = build_model(spec, template, shape.family)
    batch = shape.make_batch(extra_length=spec.extra_length, device=device)
    return Prepared(spec, model, batch, make_optimizer(model), shape.family, autocast)
