"""What the reference-equivalence suite runs, shared by the harness and the test.

The harness (`scripts/reference/golden.py`) runs this spec in a separate environment with the paper's reference
implementation (github.com/jxhe/unify-parameter-efficient-tuning at commit 3222ce2, a transformers 4.9 fork) and
writes golden outputs to tests/fixtures/reference/. The test (`tests/test_reference_equivalence.py`) runs the same
spec through `petl` on stock transformers models and compares. Nothing here imports petl or transformers: the file
must run under both environments.

Every parameter value is a function of its reference name (numpy's PCG64 seeded from the name), so neither side
stores weights: the fixtures hold only the inputs' outputs (logits, loss) and the trainable parameters' gradients
(in full up to SKETCH_OVER elements, as fixed random projections above that).
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

REFERENCE_COMMIT = "3222ce2c0079566a28043e22380eb4ab6ad14389"
SEED = 20211008  # the paper's arXiv date
SKETCH_OVER = 4096  # gradients larger than this are stored as SKETCH_SIZE random projections
SKETCH_SIZE = 32

#: Tiny models of the reference's two seq2seq architectures (the fork's config field names, which stock
#: transformers shares). Dropout rates apply in the 'train' mode only.
MODELS = {
    "bart": dict(vocab_size=64, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                 decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
                 activation_function="gelu", pad_token_id=1, bos_token_id=0, eos_token_id=2,
                 decoder_start_token_id=2, forced_eos_token_id=None, scale_embedding=False),
    "mbart": dict(vocab_size=64, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                  decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
                  activation_function="gelu", pad_token_id=1, bos_token_id=0, eos_token_id=2,
                  decoder_start_token_id=2, forced_eos_token_id=None, scale_embedding=True),
    # The encoder of the paper's GLUE runs (exps/run_glue.sh), with a 3-class head.
    "roberta": dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                    max_position_embeddings=64, type_vocab_size=1, hidden_act="gelu", pad_token_id=1,
                    bos_token_id=0, eos_token_id=2, num_labels=3),
}
SEQ2SEQ = ("bart", "mbart")
#: Each architecture's dropout rates in the 'train' mode (0 in 'eval').
DROPOUT = {"bart": dict(dropout=0.1, attention_dropout=0.1, activation_dropout=0.1),
           "mbart": dict(dropout=0.1, attention_dropout=0.1, activation_dropout=0.1),
           "roberta": dict(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)}
MODES = ("eval", "train")  # train: every dropout of both implementations replaced by `deterministic_dropout`


def dropout(arch: str, mode: str) -> dict:
    """The config's dropout rates for one architecture in one mode."""
    return {k: (v if mode == "train" else 0.0) for k, v in DROPOUT[arch].items()}


#: The reference's TuneArguments defaults (petl/options.py of the fork), which every combination starts from.
DEFAULTS = dict(attn_mode="none", attn_option="none", attn_composition="add", attn_bn=200, mid_dim=800,
                prefix_dropout=0.0, ffn_mode="none", ffn_option="none", ffn_bn=200,
                ffn_adapter_layernorm_option="in", ffn_adapter_init_option="bert", ffn_adapter_scalar="1",
                lora_alpha=32.0, lora_dropout=0.0, lora_init="lora")

_PREFIX = dict(attn_mode="prefix", attn_option="concat", attn_bn=30)
_SPA = dict(ffn_mode="adapter", ffn_option="parallel", ffn_bn=512, ffn_adapter_layernorm_option="none",
            ffn_adapter_init_option="lora", ffn_adapter_scalar="4")

_ALL = ("bart", "mbart", "roberta")
#: name -> (reference options, architectures, what it is). Sizes are those of the fork's exps/run_xsum.sh (the
#: GLUE MAM: exps/run_glue.sh). The reference's RoBERTa has no prompt tuning.
COMBOS: dict[str, tuple[dict, tuple[str, ...], str]] = {
    "bare": ({}, _ALL, "the frozen model alone"),
    "prefix": (dict(_PREFIX, attn_bn=200), _ALL, "prefix tuning, MLP re-parameterisation"),
    "prefix_nomlp": (dict(attn_mode="prefix_nomlp", attn_option="concat", attn_bn=200), _ALL,
                     "prefix tuning, prefixes learned directly"),
    "gated_prefix": (dict(_PREFIX, attn_option="cross_attn_noln", attn_composition="gate_add"), _ALL,
                     "Eq. 7's two terms computed apart, composed by the gate λ"),
    "gated_prefix_ln": (dict(_PREFIX, attn_option="cross_attn", attn_composition="gate_add"), _ALL,
                        "as gated_prefix, the prefix query from LayerNorm(h)"),
    "ungated_prefix": (dict(_PREFIX, attn_option="cross_attn_noln", attn_composition="add"), _ALL,
                       "prefix attention added without the gate"),
    "ungated_prefix_ln": (dict(_PREFIX, attn_option="cross_attn", attn_composition="add"), ("bart", "roberta"),
                          "as ungated_prefix, the prefix query from LayerNorm(h)"),
    "mh_pa": (dict(_PREFIX, attn_option="cross_attn_relu"), _ALL, "multi-head parallel adapter"),
    "sa_attn": (dict(attn_mode="adapter", attn_option="sequential"), _ALL,
                "sequential adapter at attention"),
    "pa_attn": (dict(attn_mode="adapter", attn_option="parallel"), _ALL,
                "parallel adapter at attention"),
    "sa_ffn": (dict(ffn_mode="adapter", ffn_option="sequential"), _ALL, "sequential FFN adapter"),
    "pa_ffn": (dict(ffn_mode="adapter", ffn_option="parallel"), _ALL, "parallel FFN adapter"),
    "houlsby": (dict(attn_mode="adapter", attn_option="sequential", ffn_mode="adapter", ffn_option="sequential",
                     ffn_adapter_layernorm_option="none"), _ALL, "Houlsby (run_xsum.sh)"),
    "scaled_pa": (dict(_SPA), _ALL, "scaled parallel FFN adapter, s = 4"),
    "scaled_pa_learned": (dict(_SPA, ffn_adapter_scalar="learnable_scalar"), ("bart",),
                          "scaled parallel FFN adapter, s learned"),
    "pa_ffn_ln_out": (dict(ffn_mode="adapter", ffn_option="parallel", ffn_adapter_layernorm_option="out",
                           ffn_adapter_scalar="4"), ("bart",),
                      "LayerNorm on the adapter's output; the reference scales before normalising"),
    "pfeiffer": (dict(ffn_mode="adapter", ffn_option="pfeiffer", ffn_bn=600), ("mbart", "roberta"),
                 "Pfeiffer adapter"),
    "lora": (dict(attn_mode="lora", attn_bn=16, lora_alpha=32.0, lora_dropout=0.1), _ALL,
             "LoRA on W_q, W_v"),
    "lora_ffn": (dict(ffn_mode="lora", ffn_bn=16, lora_alpha=32.0, lora_dropout=0.1), ("bart", "roberta"),
                 "LoRA on W_1, W_2"),
    "lora_both": (dict(attn_mode="lora", attn_bn=16, ffn_mode="lora", ffn_bn=16, lora_alpha=32.0, lora_dropout=0.1),
                  ("bart",), "LoRA on attention and FFN"),
    "prefix_lora_ffn": (dict(_PREFIX, ffn_mode="lora", ffn_bn=102, lora_alpha=408.0), ("bart",),
                        "prefix (l=30) + LoRA on the FFN"),
    "mam": (dict(_PREFIX, **_SPA), _ALL, "MAM adapter"),
    "mam_glue": (dict(_PREFIX, attn_bn=16, **dict(_SPA, ffn_bn=16, ffn_adapter_scalar="2")), ("roberta",),
                 "MAM adapter at the GLUE sizes (l=16, r=16, s=2)"),
    "bitfit": (dict(attn_mode="bitfit"), _ALL, "BitFit"),
    "prompt_tuning": (dict(attn_mode="prompt_tuning", attn_bn=200), SEQ2SEQ, "prompt tuning"),
}

#: (combination, architecture) where petl follows the paper's intent instead of a reference defect; the harness
#: writes a second golden from the reference with the defect patched out (scripts/reference/golden.py `_patched`),
#: and the test asserts that petl matches that one and differs from the unpatched reference (or that the unpatched
#: reference fails, where it does).
_ROBERTA_GATE = ("the reference's RoBERTa cannot run gate_add: it reads the key length from the head axis "
                 "(a shape error); past that, it gates the prefix against unscaled attention logits and then "
                 "discards the gated output. petl computes what the BART reference computes: "
                 "(1 - λ) softmax(q K^T/√d) V + λ softmax(q P_k^T/√d) P_v, with λ from the scaled logits")
DOCUMENTED_DIFFERENCES = {
    ("pa_ffn_ln_out", "bart"): "with ffn_adapter_layernorm_option='out' the reference computes LN(s·up) (s almost "
                               "cancels); petl computes s·LN(up)",
    ("gated_prefix", "roberta"): _ROBERTA_GATE,
    ("gated_prefix_ln", "roberta"): _ROBERTA_GATE,
}

#: Reference parameters that train in its RoBERTa but take no part in the computation (shared/paper's known
#: defects), each a pattern of reference names; petl builds none of them, and the test asserts that these are all
#: the parameters the reference leaves unused.
ROBERTA_UNUSED = {
    "the parallel FFN adapter is built a second time, in RobertaOutput":
        r"roberta\.encoder\.layer\.\d+\.output\.ef_ffn_adapter\..*",
    "prefix MLPs are built for the decoder and cross-attention an encoder does not have":
        r"prompt_model\.(wte_enc|wte2|control_trans_enc|control_trans2)\..*",
    "direct prefixes are built for the decoder and cross-attention an encoder does not have":
        r"prompt_model\.(encoder_attn|decoder_cross_attn)_(key|value)\..*",
    "the multi-head parallel adapter builds a LayerNorm it never applies":
        r"roberta\.encoder\.layer\.\d+\.attention\.self\.ef_transform_layer_norm\..*",
}
#: The reference's GLUE runs freeze the new classification head (unfreeze_params='ef_' matches no head
#: parameter); petl trains it, as every fine-tuning method does.
HEAD = r"classifier\..*"


def options(combo: str) -> dict:
    """The reference's TuneArguments for one combination."""
    return {**DEFAULTS, **COMBOS[combo][0]}


def inputs(arch: str) -> dict[str, np.ndarray]:
    """Two source sequences (the second padded); for seq2seq, decoder inputs and labels (padding labelled -100);
    for the classifier, one label per sequence."""
    rng = np.random.default_rng(SEED)
    vocab, pad, eos = MODELS[arch]["vocab_size"], MODELS[arch]["pad_token_id"], MODELS[arch]["eos_token_id"]
    src = rng.integers(4, vocab, size=(2, 9))
    src[:, -1] = eos
    src[1, 6:] = pad
    mask = (src != pad).astype(np.int64)
    if arch not in SEQ2SEQ:
        src[:, 0] = MODELS[arch]["bos_token_id"]
        return dict(input_ids=src, attention_mask=mask, labels=rng.integers(0, MODELS[arch]["num_labels"], size=2))
    tgt = rng.integers(4, vocab, size=(2, 7))
    tgt[1, 5:] = pad
    decoder_input_ids = np.concatenate([np.full((2, 1), MODELS[arch]["decoder_start_token_id"]), tgt[:, :-1]], 1)
    labels = np.where(tgt == pad, -100, tgt)
    return dict(input_ids=src, attention_mask=mask, decoder_input_ids=decoder_input_ids, labels=labels)


def _rng(name: str, salt: str = "") -> np.random.Generator:
    return np.random.default_rng([SEED, zlib.crc32((salt + name).encode())])


def parameter_value(name: str, shape) -> np.ndarray:
    """The value every parameter named `name` (reference naming) takes on both sides: seeded noise around 1 for
    LayerNorm weights and scalars, around 0 elsewhere, so that no zero initialisation hides a path."""
    noise = _rng(name).standard_normal(tuple(shape))
    if ("norm" in name.lower() and name.endswith(".weight")) or name.endswith(".scale"):
        return 1.0 + 0.1 * noise
    return 0.1 * noise


def sketch(name: str, gradient: np.ndarray) -> np.ndarray:
    """SKETCH_SIZE projections of a gradient onto fixed ±1 vectors (seeded by the reference name)."""
    flat = np.asarray(gradient, dtype=np.float64).reshape(-1)
    signs = _rng(name, "sketch").integers(0, 2, size=(SKETCH_SIZE, flat.size)) * 2.0 - 1.0
    return signs @ flat / np.sqrt(flat.size)


def gradient_record(name: str, gradient: np.ndarray) -> tuple[str, np.ndarray]:
    """(kind, values) stored for one gradient: 'grad' in full or 'sketch'."""
    if gradient.size <= SKETCH_OVER:
        return "grad", np.asarray(gradient, dtype=np.float64)
    return "sketch", sketch(name, gradient)


def _mask(numel: int, p: float, device, dtype) -> torch.Tensor:
    rng = np.random.default_rng([SEED, numel, int(round(p * 1e6))])
    keep = rng.random(numel) >= p
    return torch.from_numpy(keep).to(device=device, dtype=dtype) / (1.0 - p)


def deterministic_dropout(input, p=0.5, training=True, inplace=False):
    """F.dropout whose mask depends only on the tensor's size and p: both implementations then drop the same
    elements wherever they drop a tensor of the same size, so an output matches only if dropout sits in the same
    places."""
    if not training or p == 0.0:
        return input
    out = input * _mask(input.numel(), p, input.device, input.dtype).view(input.shape)
    return input.copy_(out) if inplace else out


def math_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """scaled_dot_product_attention in plain operations, with `deterministic_dropout` on the probabilities (the
    fused kernels draw their own masks)."""
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    if enable_gqa and key.shape[-3] != query.shape[-3]:
        groups = query.shape[-3] // key.shape[-3]
        key, value = key.repeat_interleave(groups, dim=-3), value.repeat_interleave(groups, dim=-3)
    scores = torch.matmul(query, key.transpose(-1, -2)) * scale
    if is_causal:
        causal = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
    probs = torch.softmax(scores, dim=-1)
    return torch.matmul(deterministic_dropout(probs, dropout_p, dropout_p > 0), value)
