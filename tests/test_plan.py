"""`longcot train RECIPE --dry-run` plans a job: parameters, memory per device, tokens per step, the data mapping.

Acceptance (issue 18, point 2): the real-job recipes plan from shipped configs and five-row samples, offline, and a
wrong column path fails with the row, the path and the columns that exist."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from longcot.cli import main as cli_main
from longcot.config import load_recipe
from longcot.plan import ModelConfigError, make_plan
from longcot.plan.memory import GB, engine_memory, shape_of, trainer_memory
from longcot.plan.model_config import find_model_config, to_pretrained_config
from longcot.policies.build import build_tokenizer, tiny_moe_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS, DATA = ROOT / "tests/data/configs", ROOT / "tests/data/datasets"
REAL = {  # recipe -> overrides that point it at shipped files (the hub names need a network)
    "recipes/qwen3-30b-a3b/dapo-math.yaml": [f"model.config={CONFIGS / 'qwen3-30b-a3b.json'}",
                                             f"data.source={DATA / 'dapo_math_17k.jsonl'}",
                                             f"eval.source={DATA / 'aime_2024.jsonl'}"],
    "recipes/qwen3-4b/deepscaler.yaml": [f"model.config={CONFIGS / 'qwen3-4b.json'}",
                                         f"data.source={DATA / 'deepscaler.jsonl'}",
                                         f"eval.source={DATA / 'aime_2024.jsonl'}"],
    "recipes/r1-distill-1.5b/aime.yaml": [f"model.config={CONFIGS / 'deepseek-r1-distill-qwen-1.5b.json'}",
                                          f"data.source={DATA / 'deepscaler.jsonl'}",
                                          f"eval.source={DATA / 'aime_2024.jsonl'}"],
}


@pytest.mark.parametrize("name, total, active", [
    ("qwen3-30b-a3b.json", 30.53e9, 3.35e9),  # published: 30.5B total, 3.3B activated
    ("qwen3-4b.json", 4.02e9, 4.02e9),
    ("deepseek-r1-distill-qwen-1.5b.json", 1.78e9, 1.78e9),
])
def test_parameters_of_the_real_models_from_their_configs(name, total, active):
    shape = shape_of(to_pretrained_config(json.loads((CONFIGS / name).read_text())))
    assert shape.params == pytest.approx(total, rel=2e-3) and shape.active_params == pytest.approx(active, rel=2e-3)


def test_tiny_moe_counts_match_the_built_model_and_memory_is_arithmetic():
    cfg = tiny_moe_config(len(build_tokenizer()))
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    shape = shape_of(cfg)
    assert shape.params == sum(p.numel() for p in model.parameters())
    m = trainer_memory(shape, 4, shards=1, micro_tokens=0)
    assert m.weights == 4 * shape.params and m.optimizer == 8 * shape.params and m.activations == 0
    sharded = trainer_memory(shape, 4, shards=4, micro_tokens=100, reference=True)
    assert sharded.weights == m.weights / 4 and sharded.reference == sharded.weights
    e = engine_memory(shape, 2, tensor_parallel=1, memory_bytes=GB, utilization=0.5)
    assert e.kv_bytes_per_token == 2 * 4 * 2 * 32 * 2 and e.kv_tokens() == int((GB / 2 - e.weights) // 1024)


@pytest.fixture
def online(monkeypatch):
    """A user's machine with network access: the real recipes name hub models that this machine has not cached,
    and validation refuses those only under HF_HUB_OFFLINE=1 (the plan itself reads model.config, no download)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


@pytest.mark.parametrize("recipe", sorted(REAL))
def test_dry_run_of_each_real_recipe_prints_its_memory_plan(recipe, capsys, online):
    assert cli_main(["train", str(ROOT / recipe), "--dry-run", *REAL[recipe]]) == 0
    out = capsys.readouterr().out
    for line in ("plan: ", "parameters ", "trainer memory per device", "weights", "gradients", "optimizer",
                 "activations", "KV room: 80 GiB", "tokens per step: ", "train: ", "held-out: ", "gold: math reward"):
        assert line in out, line
    assert "(ok)" in out and "FAILS" not in out


def test_dry_run_plan_numbers_for_the_moe_recipe():
    recipe = load_recipe(ROOT / "recipes/qwen3-30b-a3b/dapo-math.yaml", REAL["recipes/qwen3-30b-a3b/dapo-math.yaml"])
    plan = make_plan(recipe)
    assert plan.shape.experts == 128 and plan.shape.experts_per_token == 8
    assert plan.trace_tokens == plan.prompt_tokens + 20480 and not plan.prompt_tokens_measured
    assert [s.role for s in plan.sources] == ["train", "held-out"]
    assert plan.sources[0].fields["answer"] == "'7'" and plan.sources[1].messages[0]["content"].startswith("Solve")


def test_a_wrong_column_path_fails_the_dry_run_with_row_path_and_columns(capsys, online):
    args = REAL["recipes/qwen3-30b-a3b/dapo-math.yaml"] + ["data.columns.answer=reward_model.ground_truht"]
    assert cli_main(["train", str(ROOT / "recipes/qwen3-30b-a3b/dapo-math.yaml"), "--dry-run", *args]) == 2
    err = capsys.readouterr().err
    assert "row 0: data.columns.answer: column path 'reward_model.ground_truht'" in err
    assert "keys there: ground_truth, style" in err
    assert "top-level columns: ability, data_source, extra_info, prompt, reward_model" in err
    assert '"data_source": "math_dapo"' in err  # the row itself


def test_dry_run_refuses_sft_without_a_completion_column(capsys):
    args = [f"data.source={DATA / 'dapo_math_17k.jsonl'}", "data.task=dataset",
            "data.columns={prompt: prompt, answer: reward_model.ground_truth}"]
    assert cli_main(["train", str(ROOT / "recipes/tiny/arith-moe.yaml"), "--dry-run", *args]) == 2
    assert "SFT is on (sft.enabled) but" in capsys.readouterr().err


def test_a_hub_model_without_config_offline_says_how_to_plan_it(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    recipe = load_recipe(ROOT / "recipes/qwen3-4b/deepscaler.yaml")
    with pytest.raises(ModelConfigError, match="huggingface-cli download Qwen/Qwen3-4B config.json.*model.config="):
        find_model_config(recipe.model)


@pytest.mark.parametrize("recipe", ["recipes/tiny/arith-moe.yaml", "recipes/tiny/code-moe.yaml"])
def test_dry_run_of_the_tiny_recipes_measures_prompts_with_the_built_tokenizer(recipe, capsys):
    assert cli_main(["train", str(ROOT / recipe), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "(first training row, measured)" in out and "hardware.memory_gb unset; on CPU" in out
    assert "prompt as the model sees it: 'Q: " in out and "train: synthetic task" in out
