"""Build a tiny Qwen3-MoE causal LM and a character-level tokenizer, locally, with no download.

The tiny policy exists so the whole pipeline (vLLM rollouts, weight sync, MoE router statistics, RL updates)
runs for real on a 2-core CPU. Everything is saved in Hugging Face format, so the rest of the code loads it
exactly like a hub model (``Qwen/Qwen3-30B-A3B`` or a local path).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen3MoeConfig

# Every character the synthetic tasks, prompts and chat templates use. Order is stable: ids never change.
CHARSET = (
    " \n" + "0123456789" + "+-*/=()[]{}<>.,:;!?'\"\\_^$%&#@|~`"
    + "abcdefghijklmnopqrstuvwxyz" + "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]


def build_tokenizer(chat_template: bool = False) -> PreTrainedTokenizerFast:
    """A character-level tokenizer: one token per character, so lengths are easy to reason about. With
    ``chat_template`` it carries a Qwen3-style chat template (:mod:`longcot.policies.chat_template`)."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in CHARSET:
        vocab.setdefault(ch, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    tok.model_max_length = 4096
    if chat_template:
        from longcot.policies.chat_template import QWEN_STYLE_CHAT_TEMPLATE

        tok.chat_template = QWEN_STYLE_CHAT_TEMPLATE
    return tok


def tiny_moe_config(vocab_size: int, **overrides) -> Qwen3MoeConfig:
    """Qwen3-MoE at toy size: hidden 128, 4 layers, 8 experts top-2 (about 3.4M parameters)."""
    cfg = dict(
        vocab_size=vocab_size, hidden_size=128, intermediate_size=256, moe_intermediate_size=256,
        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
        num_experts=8, num_experts_per_tok=2, decoder_sparse_step=1, norm_topk_prob=True,
        max_position_embeddings=2048, rope_theta=10000.0, tie_word_embeddings=False,
        output_router_logits=False, router_aux_loss_coef=0.001, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    cfg.update(overrides)
    return Qwen3MoeConfig(**cfg)


def build_tiny_moe(out_dir: str | Path, seed: int = 0, chat_template: bool = False, **overrides) -> Path:
    """Create and save a randomly initialised tiny MoE policy + tokenizer to ``out_dir``; return the path.
    ``chat_template``: the tokenizer gets the Qwen3-style chat template (for ``data.template: chat``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(chat_template)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_moe_config(len(tok), **overrides), dtype=torch.float32)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "longcot_build.json").write_text(json.dumps({"seed": seed, "overrides": overrides}))
    return out
