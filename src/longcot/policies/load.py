"""Load a policy and tokenizer from any HF causal-LM path or hub name (the tiny MoE loads the same way)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_tokenizer(path: str | Path):
    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_policy(path: str | Path, dtype: str = "float32"):
    """An ``AutoModelForCausalLM`` in ``dtype``; raises a clear error for a path that is not a model."""
    p = Path(str(path))
    if p.exists() and not (p / "config.json").is_file():
        raise FileNotFoundError(f"{path} is a directory without config.json: not a Hugging Face model")
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=DTYPES[dtype])
