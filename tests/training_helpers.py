"""Helpers for the training / sweep tests: a tiny BERT saved as a model folder, tiny budgets."""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# A run of a few seconds: 2 optimizer steps, 16 dev and 16 test examples.
TINY = dict(task="rt-polarity", max_steps=2, eval_every=1, batch_size=8, max_train_examples=64,
            max_eval_examples=16, max_test_examples=16, lr=1e-3, progress=False)


def tiny_bert_folder(path: Path) -> Path:
    """Save a random 2-layer, hidden-32 BERT with the real MiniLM tokenizer into `path` (a model folder
    that petl.models.load_model accepts like any checkpoint)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from petl import assets
    if (path / "config.json").exists():
        return path
    tok = AutoTokenizer.from_pretrained(assets.ensure("minilm"))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=512)
    BertModel(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def tiny_llama_folder(path: Path) -> Path:
    """Save a random 2-layer Llama (hidden 32) with the real SmolLM2 tokenizer into `path`."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from petl import assets
    if (path / "config.json").exists():
        return path
    tok = AutoTokenizer.from_pretrained(assets.ensure("smollm2-135m"))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def subprocess_env(**extra) -> dict:
    """Environment for `python -m petl ...` children: the repo on the path, few threads, no hub."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env["HF_HUB_OFFLINE"] = "1"
    env["TOKENIZERS_PARALLELISM"] = "false"
    env.update({k: str(v) for k, v in extra.items()})
    return env


def cli_args(**params) -> list[str]:
    """`--name value` arguments for `python -m petl train`."""
    import json
    out = []
    for k, v in params.items():
        if k == "force":
            if v:
                out.append("--force")
            continue
        out += ["--" + k.replace("_", "-"), json.dumps(v) if isinstance(v, (dict, list)) else str(v)]
    return out


PYTHON = sys.executable
