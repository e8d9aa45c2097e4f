"""Eval recipes load with the standard protocol; overrides and typos behave."""

from pathlib import Path

import pytest

from longcot.config import ConfigError
from longcot.eval.cli import config_from_args, parse_args
from longcot.eval.config import load_eval_config

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "eval"


@pytest.mark.parametrize("name,source,split,n", [
    ("aime24", "HuggingFaceH4/aime_2024", "train", 64),
    ("aime25", "math-ai/aime25", "test", 64),
    ("math500", "HuggingFaceH4/MATH-500", "test", 4),
])
def test_recipes_hold_the_standard_protocol(name, source, split, n):
    cfg = load_eval_config(RECIPES / f"{name}.yaml")
    assert (cfg.dataset.source, cfg.dataset.split, cfg.n) == (source, split, n)
    assert (cfg.temperature, cfg.top_p, cfg.max_tokens, cfg.template) == (0.6, 0.95, 32768, "chat")
    want = "P\nPlease reason step by step, and put your final answer within \\boxed{}."
    assert cfg.prompt.format(problem="P") == want


def test_flags_and_overrides_map_to_keys():
    ns = parse_args([str(RECIPES / "aime24.yaml"), "seed=3", "dataset.limit=5", "--dataset", "/tmp/x.jsonl",
                     "--n", "4", "--top-p", "0.9", "--k", "1,2", "--template", "raw"])
    cfg = config_from_args(ns)
    assert (cfg.dataset.source, cfg.dataset.limit, cfg.n, cfg.top_p, cfg.k, cfg.seed) == ("/tmp/x.jsonl", 5, 4, 0.9,
                                                                                           [1, 2], 3)
    assert cfg.template == "raw" and cfg.dataset.split == "train"


def test_flags_may_sit_between_the_overrides():
    """docs/eval.md's `longcot eval RECIPE --model M key=value ... --out DIR`: argparse's plain parse stopped at
    the first flag and refused the overrides after it ("unrecognized arguments")."""
    ns = parse_args([str(RECIPES / "aime24.yaml"), "--model", "m", "n=4", "k=[1,4]", "--out", "o", "max_tokens=64"])
    cfg = config_from_args(ns)
    assert (cfg.model, cfg.n, cfg.k, cfg.max_tokens, cfg.out) == ("m", 4, [1, 4], 64, "o")


def test_typos_name_the_closest_key():
    with pytest.raises(ConfigError, match="did you mean 'temperature'"):
        load_eval_config(str(RECIPES / "aime24.yaml"), ["temprature=0.7"])
    with pytest.raises(ConfigError, match="did you mean 'columns'"):
        load_eval_config(None, ["dataset.colums={}"])
    with pytest.raises(ConfigError, match="must contain"):
        load_eval_config(None, ["prompt=no placeholder"])


def test_prompts_chat_and_raw():
    from longcot.eval.dataset import build_prompts, render_prompt
    from longcot.policies.build import build_tokenizer

    tok = build_tokenizer()
    row = {"id": "7", "problem": "1+1?", "answer": "2", "year": "2024"}
    assert render_prompt(row, tok, "raw", "Q ({year}): {problem}\nA:") == "Q (2024): 1+1?\nA:"
    with pytest.raises(ValueError, match="no chat template"):
        render_prompt(row, tok, "chat", "{problem}")
    with pytest.raises(KeyError, match="'level'"):
        render_prompt(row, tok, "raw", "{level}: {problem}")
    tok.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>"
    (p,) = build_prompts([row], tok, "chat", "{problem} Box it.")
    assert p.prompt_text == "<user>1+1? Box it.<assistant>"
    assert p.prompt_ids == tok(p.prompt_text, add_special_tokens=False)["input_ids"] and p.meta == {"answer": "2"}


def test_a_protocol_longer_than_the_models_context_is_refused_before_the_engine(tmp_path):
    """The AIME protocol's 32768 tokens on a 2048-position model: one line that says what fits, instead of vLLM's
    validation traceback suggesting VLLM_ALLOW_LONG_MAX_MODEL_LEN."""
    from longcot.errors import InputError
    from longcot.eval.run import check_context
    from longcot.policies.build import build_tiny_moe

    model = build_tiny_moe(tmp_path / "m")  # max_position_embeddings 2048
    cfg = load_eval_config(RECIPES / "aime24.yaml", [f"model={model}"])
    with pytest.raises(InputError, match=r"\(74 tokens\) \+ max_tokens \(32768\) = 32842 tokens do not fit .* "
                                         r"context of 2048 .*--max-tokens 1974 at most"):
        check_context(cfg, 74)
    check_context(load_eval_config(RECIPES / "aime24.yaml", [f"model={model}", "max_tokens=1974"]), 74)
