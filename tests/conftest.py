"""What every test file shares: the one tiny-model factory, the two markers, and the rule that no test downloads.

Tiny models
-----------
One table gives a random 2-layer model (width 32, Llama 36) of the main architectures (``ARCHS``; its config:
``tiny_config(arch)``, its family: ``FAMILY[arch]``) over a 100-token vocabulary; ``COVERAGE_ARCHS`` adds ten more
(XLM-R, DistilBERT, DeBERTa-v2, ModernBERT, mT5, Mistral, Qwen2, Qwen3, Gemma 2, Phi-3) for tests/test_coverage.py.
The same model comes two ways:

* ``tiny_model(arch, seed=0)``: in memory, with its family's head (sequence classification for the encoders,
  the LM head for seq2seq and decoder models), for the mechanism tests; ``tiny_batch(arch)`` gives it inputs
  (right padding in the last row) and labels. Import them: ``from conftest import tiny_batch, tiny_model``.
* the ``tiny_dir`` fixture: ``tiny_dir(arch)`` is the path (str) of a folder holding that model (an encoder
  without its head, as MiniLM ships) and ``tiny_tokenizer(arch)``, saved once per session: a checkpoint that
  ``petl.models.load_model``, ``TrainConfig(model=...)`` and ``python -m petl train --model`` take.

The tokenizer is word-level over ``WORDS`` (lower-cased, punctuation split off; any other word is unk), and the
configs use its special ids: 0 pad, 1 unk, 2 bos / [CLS], 3 eos / [SEP]. GPT-2's tokenizer has no pad token, as
the real one.

Markers (registered in pyproject.toml)
--------------------------------------
``needs_assets(*names)``: the test reads fetched assets (``petl.assets`` names or groups, e.g. ``"ro-l10n"``).
When one of them is not in the cache the test is skipped with the fetch command; nothing is downloaded. ``make
test`` fetches minilm, smollm2-135m, rt-polarity and ro-l10n first; a test that needs more (bigbench) skips there.
A test without the marker that asks ``petl.assets.ensure`` for a real asset of the real cache fails, present or
not, so a missing marker shows on any machine instead of becoming a download on a clean one.

``slow``: a test that takes more than about 15 s on a 2-core CPU (training runs, subprocesses). ``make test``
runs them; ``pytest -m "not slow"`` leaves them out.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from petl import assets

# ---- the tiny-model factory ------------------------------------------------------------------------------------

WORDS = tuple(
    "the a an of to in on and is was for with by at from that this it he she they we you said "
    "film movie good bad great boring fun story plot actor cast scene funny dull best worst "
    "bank rates economy growth government minister election vote party news report year month "
    "cat dog sat mat ran fast slow big small new old summary article claim evidence true false "
    "not very much more than one two but so all what who will would can has have are "
    ". , ! ? : ' \" -".split())
PAD, UNK, BOS, EOS = 0, 1, 2, 3
VOCAB = 4 + len(WORDS)  # 100
MAX_POSITIONS = 128     # rt-polarity's max_source_length

_IDS = dict(vocab_size=VOCAB, pad_token_id=PAD)
_SEQ2SEQ = dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                max_position_embeddings=MAX_POSITIONS, bos_token_id=BOS, eos_token_id=EOS,
                decoder_start_token_id=EOS, forced_eos_token_id=None, dropout=0.0, attention_dropout=0.0,
                activation_dropout=0.0, **_IDS)

#: arch -> (transformers config class, its arguments)
_CONFIGS = {
    "bert": ("BertConfig", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                max_position_embeddings=MAX_POSITIONS, hidden_dropout_prob=0.0,
                                attention_probs_dropout_prob=0.0, num_labels=3, **_IDS)),
    # RoBERTa numbers positions from pad_token_id + 1
    "roberta": ("RobertaConfig", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=64, max_position_embeddings=MAX_POSITIONS + 2,
                                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=2,
                                      bos_token_id=BOS, eos_token_id=EOS, **_IDS)),
    "bart": ("BartConfig", _SEQ2SEQ),
    "mbart": ("MBartConfig", _SEQ2SEQ),
    "marian": ("MarianConfig", dict(_SEQ2SEQ, decoder_start_token_id=PAD)),  # Marian starts from pad
    "gpt2": ("GPT2Config", dict(n_embd=32, n_layer=2, n_head=4, n_positions=MAX_POSITIONS, resid_pdrop=0.0,
                                embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=BOS, eos_token_id=EOS, **_IDS)),
    # head_dim 6 and grouped-query attention (6 query heads on 2 key/value heads)
    "llama": ("LlamaConfig", dict(hidden_size=36, intermediate_size=64, num_hidden_layers=2, num_attention_heads=6,
                                  num_key_value_heads=2, max_position_embeddings=MAX_POSITIONS, bos_token_id=BOS,
                                  eos_token_id=EOS, **_IDS)),
    "t5": ("T5Config", dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, dropout_rate=0.0,
                            decoder_start_token_id=PAD, eos_token_id=EOS, **_IDS)),
}
ARCHS = tuple(_CONFIGS)
_DECODER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                max_position_embeddings=MAX_POSITIONS, bos_token_id=BOS, eos_token_id=EOS, **_IDS)
#: More architectures, for the coverage tests (tests/test_coverage.py): petl finds their sites from their structure.
_COVERAGE_CONFIGS = {
    "xlm-roberta": ("XLMRobertaConfig", _CONFIGS["roberta"][1]),
    "distilbert": ("DistilBertConfig", dict(dim=32, n_layers=2, n_heads=4, hidden_dim=64, dropout=0.0,
                                            attention_dropout=0.0, max_position_embeddings=MAX_POSITIONS,
                                            num_labels=2, **_IDS)),
    "deberta-v2": ("DebertaV2Config", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                           intermediate_size=64, max_position_embeddings=MAX_POSITIONS,
                                           hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                           relative_attention=True, num_labels=2, **_IDS)),
    "modernbert": ("ModernBertConfig", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                            intermediate_size=64, max_position_embeddings=MAX_POSITIONS,
                                            num_labels=2, bos_token_id=BOS, eos_token_id=EOS, cls_token_id=BOS,
                                            sep_token_id=EOS, **_IDS)),
    "mt5": ("MT5Config", _CONFIGS["t5"][1]),  # T5 v1.1's gated FFN (wi_0, wi_1, wo)
    "mistral": ("MistralConfig", _DECODER),
    "qwen2": ("Qwen2Config", _DECODER),
    "qwen3": ("Qwen3Config", dict(_DECODER, head_dim=8)),  # q/k norms, head_dim apart from hidden / heads
    # Gemma 2 soft-caps its attention scores by default, which prefix methods refuse; the tests switch it off
    "gemma2": ("Gemma2Config", dict(_DECODER, head_dim=8, attn_logit_softcapping=None)),
    "phi3": ("Phi3Config", _DECODER),  # fused qkv_proj under grouped-query attention, fused gate_up_proj
}
COVERAGE_ARCHS = ARCHS + tuple(_COVERAGE_CONFIGS)
FAMILY = {"bert": "encoder", "roberta": "encoder", "bart": "seq2seq", "mbart": "seq2seq", "marian": "seq2seq",
          "t5": "seq2seq", "gpt2": "decoder", "llama": "decoder",
          "xlm-roberta": "encoder", "distilbert": "encoder", "deberta-v2": "encoder", "modernbert": "encoder",
          "mt5": "seq2seq", "mistral": "decoder", "qwen2": "decoder", "qwen3": "decoder", "gemma2": "decoder",
          "phi3": "decoder"}
#: Architectures that transformers runs with eager attention only (no SDPA path in their model file).
EAGER_ONLY = {"deberta-v2", "gemma2"}
_HEAD = {"encoder": "AutoModelForSequenceClassification", "seq2seq": "AutoModelForSeq2SeqLM",
         "decoder": "AutoModelForCausalLM"}
# torch and transformers are imported on first use, so the test files that need no model do not pay for them


def tiny_config(arch: str):
    """A new config object of the tiny `arch` (change it freely)."""
    import transformers
    name, kwargs = _CONFIGS[arch] if arch in _CONFIGS else _COVERAGE_CONFIGS[arch]
    return getattr(transformers, name)(**kwargs)


def tiny_model(arch: str, seed: int = 0):
    """A tiny random model of `arch` in eval mode, with the head its family uses."""
    import torch
    import transformers
    torch.manual_seed(seed)
    auto = getattr(transformers, _HEAD[FAMILY[arch]])
    implementation = "eager" if arch in EAGER_ONLY else "sdpa"
    return auto.from_config(tiny_config(arch), attn_implementation=implementation).eval()


def tiny_batch(arch: str, batch: int = 3, length: int = 7, seed: int = 0) -> dict:
    """Inputs with right padding in the last row, and labels for the family's loss (no special ids inside)."""
    import torch
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(EOS + 1, VOCAB, (batch, length), generator=generator)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[-1, length - 2:] = 0
    ids = ids.masked_fill(mask == 0, PAD)
    inputs = dict(input_ids=ids, attention_mask=mask)
    family = FAMILY[arch]
    if family == "encoder":
        inputs["labels"] = torch.randint(0, tiny_config(arch).num_labels, (batch,), generator=generator)
    elif family == "seq2seq":
        inputs["labels"] = torch.randint(EOS + 1, VOCAB, (batch, 5), generator=generator)
    else:
        inputs["labels"] = ids.masked_fill(mask == 0, -100)
    return inputs


def tiny_tokenizer(arch: str):
    """A word-level tokenizer (PreTrainedTokenizerFast) over WORDS with the special tokens and template of the
    architecture's family."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] if arch == "bert" else ["<pad>", "<unk>", "<s>", "</s>"]
    vocab = {token: i for i, token in enumerate([*specials, *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=specials[UNK]))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # words joined by spaces
    if arch == "bert":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", BOS), ("[SEP]", EOS)])
        return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                       cls_token="[CLS]", sep_token="[SEP]",
                                       model_input_names=["input_ids", "token_type_ids", "attention_mask"])
    if arch in ("roberta", "bart", "mbart"):
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", BOS), ("</s>", EOS)])
    elif arch in ("t5", "marian"):
        tok.post_processor = processors.TemplateProcessing(
            single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", EOS)])
    elif arch == "llama":
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", BOS)])
    # gpt2: no special tokens added, and no pad token (as the real one)
    kwargs = dict(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    if arch != "gpt2":
        kwargs["pad_token"] = "<pad>"
    return PreTrainedTokenizerFast(**kwargs)


def save_tiny(folder: str | Path, arch: str, seed: int = 0) -> Path:
    """Save tiny_model(arch, seed) (an encoder without its head) and tiny_tokenizer(arch) into `folder`."""
    folder = Path(folder)
    if not (folder / "config.json").exists():
        model = tiny_model(arch, seed)
        (model.base_model if FAMILY[arch] == "encoder" else model).save_pretrained(folder)
        tiny_tokenizer(arch).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """tiny_dir(arch, seed=0) -> the folder (str) of that tiny model and its tokenizer, saved once per session.
    Shared by every test: read it, never write into it."""
    root = tmp_path_factory.mktemp("tiny-models")
    return lambda arch, seed=0: str(save_tiny(root / f"{arch}-seed{seed}", arch, seed))


# ---- needs_assets: skip when missing, never download ------------------------------------------------------------

_REAL_CACHE = assets.cache_dir()
_PINNED = frozenset(assets.ASSETS)  # the real assets (tests add fake ones to assets.ASSETS)
_state: dict[str, str] = {}
_allowed: set[str] | None = None    # while a test runs: the assets its needs_assets marker names


def _asset_state(name: str) -> str:
    if not _state:  # one look per session: sizes of every file, hashes only of changed ones
        _state.update({n: row["state"] for n, row in assets.status().items()})
    return _state[name]


def _marked_assets(item) -> list[str]:
    names = []
    for marker in item.iter_markers("needs_assets"):
        if not marker.args:
            raise pytest.UsageError(f"{item.nodeid}: needs_assets takes the asset names, e.g. "
                                    f"@pytest.mark.needs_assets('minilm')")
        names += marker.args
    return names


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    wanted = _marked_assets(item)
    if not wanted:
        return
    why = {}
    for name in wanted:
        members = assets.expand([name])
        bad = [f"{a} {_asset_state(a)}" for a in members if _asset_state(a) != "present"]
        if bad:
            why[name] = bad[0] if len(members) == 1 else f"{name}: {len(bad)} of its {len(members)} not present"
    if why:
        pytest.skip(f"needs assets not in {assets.cache_dir()} ({', '.join(why.values())}); fetch them with "
                    f"`python -m petl.assets fetch {' '.join(why)}`")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    global _allowed
    _allowed = set(assets.expand(_marked_assets(item)))
    try:
        return (yield)
    finally:
        _allowed = None


def _ensure_only_what_the_marker_names(name: str, _ensure=assets.ensure):
    if (_allowed is not None and name in _PINNED and name not in _allowed
            and assets.cache_dir() == _REAL_CACHE):
        pytest.fail(f"this test uses the asset {name!r} without saying so, and on a machine without it would "
                    f"download it: mark it @pytest.mark.needs_assets({name!r}) (or use a tiny local stand-in)",
                    pytrace=False)
    return _ensure(name)


assets.ensure = _ensure_only_what_the_marker_names  # petl.tasks and petl.models call assets.ensure(...)
