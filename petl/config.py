"""PETLConfig: the paper's design dimensions with the reference implementation's option names.

Every method of He et al. (2022) is one point in this space (the paper's Table 1):

    functional form      attn_mode / ffn_mode          prefix | lora | adapter | prompt_tuning | bitfit
    insertion form       attn_option / ffn_option      parallel | sequential (prefix: concat | cross_attn*)
    modified repr.       attn_* versus ffn_*           head attention, attention sublayer, FFN sublayer
    composition          attn_composition, ffn_adapter_scalar, lora_alpha   add | gate_add | scaled add

`PRESETS` names every variant the paper reports, with the paper's sizes as defaults (BART-large scale unless
the variant only appears in the GLUE table).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

ATTN_MODES = ("none", "prefix", "prefix_nomlp", "lora", "adapter", "prompt_tuning", "bitfit")
ATTN_OPTIONS = ("none", "concat", "cross_attn", "cross_attn_noln", "cross_attn_relu", "parallel", "sequential")
ATTN_COMPOSITIONS = ("add", "gate_add")
FFN_MODES = ("none", "adapter", "lora")
FFN_OPTIONS = ("none", "parallel", "sequential", "pfeiffer")
LAYERNORM_OPTIONS = ("none", "in", "out")
INIT_OPTIONS = ("bert", "lora")
MH_ADAPTER_QUERIES = (None, "layernorm", "attention")
METHOD_DTYPES = ("auto", "base", "float32")

PREFIX_OPTIONS = ("concat", "cross_attn", "cross_attn_noln", "cross_attn_relu")
ADAPTER_OPTIONS = ("parallel", "sequential")


def _choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"PETLConfig.{name}={value!r} is not valid; choose one of {', '.join(map(repr, choices))}")


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"PETLConfig.{name}={value!r} is not valid; it must be a positive integer")


def _probability(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"PETLConfig.{name}={value!r} is not valid; it must be a number in [0, 1)")


@dataclass
class PETLConfig:
    """One parameter-efficient method, as the paper's design dimensions (reference option names).

    attn_bn is the prefix length l for prefix / prompt modes and the bottleneck r for adapter / LoRA on attention;
    ffn_bn is the bottleneck r on the FFN. LoRA scales by s = lora_alpha / r (the paper's s).

    Every option computes what the reference implementation computes (tests/test_reference_equivalence.py, on
    BART, mBART and RoBERTa), except where the reference has a defect and petl follows the paper:
    ffn_adapter_layernorm_option='out' is s · LN(Δh) (the reference: LN(s · Δh), where s nearly cancels);
    attn_composition='gate_add' on RoBERTa is BART's gate (the reference's RoBERTa fails on it; see
    petl.methods.prefix). On RoBERTa petl also trains the classification head, which the reference's GLUE runs
    leave frozen, and builds no parameter the computation does not use (the reference builds its parallel FFN
    adapter twice and prefix MLPs for attention types an encoder does not have).
    """

    attn_mode: str = "none"
    attn_option: str = "none"
    attn_composition: str = "add"
    attn_bn: int = 200
    mid_dim: int = 800
    prefix_dropout: float = 0.0
    ffn_mode: str = "none"
    ffn_option: str = "none"
    ffn_bn: int = 512
    ffn_adapter_layernorm_option: str = "in"
    ffn_adapter_init_option: str = "bert"
    ffn_adapter_scalar: float | str = 1.0
    # The reference's adapters at attention always use a LayerNorm on their input, BERT init and s = 1, whatever the
    # ffn_adapter_* options say; these options default to exactly that.
    attn_adapter_layernorm_option: str = "in"
    attn_adapter_init_option: str = "bert"
    attn_adapter_scalar: float | str = 1.0
    # Where the multi-head parallel adapter (attn_option='cross_attn_relu') takes its query: 'layernorm' is
    # W_q · LayerNorm(h) unscaled (the reference's BART), 'attention' the attention's own scaled query (the
    # reference's mBART and RoBERTa). None picks BART's choice for BART-family models (bart, marian) and the
    # attention's query everywhere else.
    mh_adapter_query: str | None = None
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    lora_init: str = "lora"
    full_finetune: bool = False
    # The dtype of the method's parameters and of a new task head (petl.methods.base.parameter_dtype): 'auto' is
    # float32 on a float16 or bfloat16 base model, so AdamW updates float32 values (mixed-precision training's
    # master weights; fp16 also needs them for a GradScaler), and the base's own dtype on a float32 or float64 one;
    # 'base' is the base model's dtype always (on a half-precision base, updates smaller than its rounding step are
    # lost); 'float32' is float32 always.
    method_dtype: str = "auto"
    variant: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        _choice("attn_mode", self.attn_mode, ATTN_MODES)
        _choice("attn_option", self.attn_option, ATTN_OPTIONS)
        _choice("attn_composition", self.attn_composition, ATTN_COMPOSITIONS)
        _choice("ffn_mode", self.ffn_mode, FFN_MODES)
        _choice("ffn_option", self.ffn_option, FFN_OPTIONS)
        _choice("ffn_adapter_layernorm_option", self.ffn_adapter_layernorm_option, LAYERNORM_OPTIONS)
        _choice("ffn_adapter_init_option", self.ffn_adapter_init_option, INIT_OPTIONS)
        _choice("attn_adapter_layernorm_option", self.attn_adapter_layernorm_option, LAYERNORM_OPTIONS)
        _choice("attn_adapter_init_option", self.attn_adapter_init_option, INIT_OPTIONS)
        _choice("mh_adapter_query", self.mh_adapter_query, MH_ADAPTER_QUERIES)
        _choice("lora_init", self.lora_init, INIT_OPTIONS)
        _choice("method_dtype", self.method_dtype, METHOD_DTYPES)
        for name in ("attn_bn", "ffn_bn", "mid_dim"):
            _positive_int(name, getattr(self, name))
        for name in ("prefix_dropout", "lora_dropout"):
            _probability(name, getattr(self, name))
        if isinstance(self.lora_alpha, bool) or not isinstance(self.lora_alpha, (int, float)) or self.lora_alpha <= 0:
            raise ValueError(f"PETLConfig.lora_alpha={self.lora_alpha!r} is not valid; it must be a positive number")
        self.ffn_adapter_scalar = _scalar(self.ffn_adapter_scalar, "ffn_adapter_scalar")
        self.attn_adapter_scalar = _scalar(self.attn_adapter_scalar, "attn_adapter_scalar")
        if not isinstance(self.full_finetune, bool):
            raise ValueError(f"PETLConfig.full_finetune={self.full_finetune!r} is not valid; it must be true or false")
        self._check_combination()

    def _check_combination(self) -> None:
        mode, option = self.attn_mode, self.attn_option
        if mode in ("prefix", "prefix_nomlp") and option not in PREFIX_OPTIONS:
            raise ValueError(
                f"PETLConfig.attn_option={option!r} is not valid with attn_mode={mode!r}; "
                f"choose one of {', '.join(map(repr, PREFIX_OPTIONS))}")
        if mode == "adapter" and option not in ADAPTER_OPTIONS:
            raise ValueError(
                f"PETLConfig.attn_option={option!r} is not valid with attn_mode='adapter'; "
                f"choose one of {', '.join(map(repr, ADAPTER_OPTIONS))}")
        if mode in ("none", "lora", "prompt_tuning", "bitfit") and option not in ("none", "concat"):
            raise ValueError(
                f"PETLConfig.attn_option={option!r} has no meaning with attn_mode={mode!r}; use 'none'")
        if self.attn_composition == "gate_add" and not (
                mode in ("prefix", "prefix_nomlp") and option in ("cross_attn", "cross_attn_noln")):
            raise ValueError(
                "PETLConfig.attn_composition='gate_add' (the gate λ of Eq. 7) needs attn_mode 'prefix' or "
                "'prefix_nomlp' with attn_option 'cross_attn' or 'cross_attn_noln'")
        if self.ffn_mode == "adapter" and self.ffn_option not in ("parallel", "sequential", "pfeiffer"):
            raise ValueError(
                f"PETLConfig.ffn_option={self.ffn_option!r} is not valid with ffn_mode='adapter'; "
                "choose one of 'parallel', 'sequential', 'pfeiffer'")
        if self.ffn_mode in ("none", "lora") and self.ffn_option != "none":
            raise ValueError(
                f"PETLConfig.ffn_option={self.ffn_option!r} has no meaning with ffn_mode={self.ffn_mode!r}; use 'none'")
        if self.full_finetune and (mode != "none" or self.ffn_mode != "none"):
            raise ValueError("PETLConfig.full_finetune=True trains every weight; set attn_mode and ffn_mode to 'none'")

    @property
    def prefix_attention(self) -> str | None:
        """The head-attention form of prefix modes (concat | cross_attn | ...), None otherwise."""
        return self.attn_option if self.attn_mode in ("prefix", "prefix_nomlp") else None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict) -> "PETLConfig":
        """Build from a dict, rejecting unknown option names (naming the valid ones)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown PETLConfig option(s) {unknown}; valid options are {sorted(known)}")
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> "PETLConfig":
        return cls.from_dict(json.loads(text))


def _scalar(value, name: str):
    """An adapter's s: a positive number, or 'learnable_scalar' (the paper's trainable s, Table 5)."""
    if value == "learnable_scalar":
        return value
    original = value
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            value = None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"PETLConfig.{name}={original!r} is not valid; it must be a positive number or "
                         "'learnable_scalar'")
    return float(value)


_PREFIX = dict(attn_mode="prefix", attn_option="concat")
_LORA_INIT_ADAPTER = dict(ffn_adapter_init_option="lora", ffn_adapter_layernorm_option="none")

#: Every variant the paper reports. Sizes are the paper's (BART-large tables; GLUE sizes where the variant only
#: appears in the GLUE table). LoRA presets use s = lora_alpha / r = 4, the paper's better scale (Table 5).
PRESETS: dict[str, dict] = {
    "full": dict(full_finetune=True),
    "bitfit": dict(attn_mode="bitfit"),
    "prompt_tuning": dict(attn_mode="prompt_tuning", attn_bn=200),
    "prefix": dict(_PREFIX, attn_bn=200),
    "prefix_nomlp": dict(attn_mode="prefix_nomlp", attn_option="concat", attn_bn=200),
    "gated_prefix": dict(attn_mode="prefix", attn_option="cross_attn_noln", attn_composition="gate_add", attn_bn=200),
    "ungated_prefix": dict(attn_mode="prefix", attn_option="cross_attn_noln", attn_composition="add", attn_bn=200),
    "mh_pa": dict(attn_mode="prefix", attn_option="cross_attn_relu", attn_bn=200),
    "lora": dict(attn_mode="lora", attn_bn=200, lora_alpha=800.0),
    "lora_ffn": dict(ffn_mode="lora", ffn_bn=102, lora_alpha=408.0),
    "sa_attn": dict(attn_mode="adapter", attn_option="sequential", attn_bn=200),
    "sa_ffn": dict(ffn_mode="adapter", ffn_option="sequential", ffn_bn=200),
    "pa_attn": dict(attn_mode="adapter", attn_option="parallel", attn_bn=200),
    "pa_ffn": dict(ffn_mode="adapter", ffn_option="parallel", ffn_bn=200),
    "scaled_pa": dict(ffn_mode="adapter", ffn_option="parallel", ffn_bn=512, ffn_adapter_scalar=4.0,
                      **_LORA_INIT_ADAPTER),
    # Houlsby as the reference's exps/run_xsum.sh sets it: no LayerNorm in the FFN adapters (the attention adapters
    # keep theirs, as the reference always does); the GLUE size r = 16.
    "houlsby": dict(attn_mode="adapter", attn_option="sequential", attn_bn=16,
                    ffn_mode="adapter", ffn_option="sequential", ffn_bn=16, ffn_adapter_layernorm_option="none"),
    "pfeiffer": dict(ffn_mode="adapter", ffn_option="pfeiffer", ffn_bn=600),
    "mam": dict(_PREFIX, attn_bn=30, ffn_mode="adapter", ffn_option="parallel", ffn_bn=512,
                ffn_adapter_scalar=4.0, **_LORA_INIT_ADAPTER),
    # The MAM adapter of the reference's released GLUE script (exps/run_glue.sh): l = 16, r = 16, s = 2.
    "mam_glue": dict(_PREFIX, attn_bn=16, ffn_mode="adapter", ffn_option="parallel", ffn_bn=16,
                     ffn_adapter_scalar=2.0, **_LORA_INIT_ADAPTER),
    # The two other 6.7% combinations of the paper's Table 6.
    "prefix_lora_ffn": dict(_PREFIX, attn_bn=30, ffn_mode="lora", ffn_bn=102, lora_alpha=408.0),
    "pa_attn_pa_ffn": dict(attn_mode="adapter", attn_option="parallel", attn_bn=30,
                           ffn_mode="adapter", ffn_option="parallel", ffn_bn=512),
}


#: The version of each method's computation. It grows when a method's forward or backward changes (tests/
#: test_reference_equivalence.py proves the current one against the reference): records of an older version are
#: superseded (petl.runs.load_runs skips them), and new ones get other run ids.
#: 2 (2026-12): adapters (dropout placement, the parallel adapter's input in pre-norm layers, Pfeiffer, the
#: attention adapters' own options), the separate-prefix forms (LayerNorm query, dropout of the prefix
#: attention) and prompt tuning (no position for the prompt) follow the reference number for number.
#: 3 (2026-12): the multi-head parallel adapter (cross_attn_relu) on every architecture but BART takes the
#: attention's own scaled query, as the reference's RoBERTa and mBART do (it took BART's W_q·LN(h) before).
COMPUTATION_VERSION = 3


def computation_version(config: "PETLConfig") -> int:
    """The version of the computation `config` runs: 1 for what has not changed since the first records (full
    fine-tuning, BitFit, LoRA, prefix tuning by concatenation), 3 for the multi-head parallel adapter, else 2."""
    unchanged = (config.full_finetune or config.attn_mode in ("none", "bitfit", "lora")
                 or config.attn_mode in ("prefix", "prefix_nomlp") and config.attn_option == "concat")
    if unchanged and config.ffn_mode in ("none", "lora"):
        return 1
    return COMPUTATION_VERSION if config.attn_option == "cross_attn_relu" else 2


#: Fields added after the first records: they enter a run's hash only when set away from these defaults, so that
#: the records of methods whose computation did not change keep their run ids.
LATER_FIELDS = dict(attn_adapter_layernorm_option="in", attn_adapter_init_option="bert", attn_adapter_scalar=1.0,
                    mh_adapter_query=None, method_dtype="auto")


def resolve(variant_or_config: "str | PETLConfig | dict", **overrides) -> PETLConfig:
    """A preset name, a dict of options or a PETLConfig, with option overrides, as a validated PETLConfig."""
    if isinstance(variant_or_config, PETLConfig):
        values, name = variant_or_config.to_dict(), variant_or_config.variant
    elif isinstance(variant_or_config, dict):
        values, name = dict(variant_or_config), variant_or_config.get("variant")
    elif isinstance(variant_or_config, str):
        if variant_or_config not in PRESETS:
            raise ValueError(f"unknown variant {variant_or_config!r}; valid variants are {', '.join(sorted(PRESETS))}")
        values, name = dict(PRESETS[variant_or_config]), variant_or_config
    else:
        raise TypeError(f"expected a variant name, a dict or a PETLConfig, got {type(variant_or_config).__name__}")
    values.update(overrides)
    values["variant"] = name
    # A LoRA preset's scale s = lora_alpha / r is the paper's knob: keep s when only the rank is overridden.
    base = PRESETS.get(name, {})
    if "lora_alpha" not in overrides and "lora_alpha" in base:
        rank_key = "attn_bn" if base.get("attn_mode") == "lora" else "ffn_bn"
        if rank_key in overrides:
            values["lora_alpha"] = base["lora_alpha"] / base[rank_key] * overrides[rank_key]
    return PETLConfig.from_dict(values)
