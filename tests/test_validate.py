"""Validation before any work (issue 14, acceptance 3): ``longcot train --dry-run`` rejects every kind of mistake
with one message that names the file/line or override and the key, and no traceback; every shipped recipe passes.
"""

from pathlib import Path

import pytest

from longcot.cli import main
from longcot.config import ConfigError, load_recipe
from longcot.config.validate import validate_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPE = str(ROOT / "recipes" / "tiny" / "arith-moe.yaml")


def dry_run(capsys, *overrides: str) -> tuple[int, str]:
    rc = main(["train", RECIPE, *overrides, "--dry-run"])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("override, key, says", [
    ("rewards=[{name: mathh}]", "rewards[0].name", "unknown reward 'mathh' (did you mean 'math'?)"),
    ("rewards=[{name: math, options: {fallbak: text}}]", "rewards[0].options",
     "unknown option 'fallbak' (did you mean 'fallback'?)"),
    ("rewards=[{name: math, options: {fallback: txt}}]", "rewards[0].options", "fallback must be 'none' or 'text'"),
    ("rl.loss.options={clip_hihg: 0.3}", "rl.loss.options", "unknown option 'clip_hihg' (did you mean 'clip_high'?)"),
    ("rl.loss={name: gspo, options: {variant: seq}}", "rl.loss.options", "variant must be 'sequence' or 'token'"),
    ("rl.loss.name=ppo_clp", "rl.loss.name", "unknown policy loss 'ppo_clp' (did you mean 'ppo_clip'?)"),
    ("rl.advantage.options={epss: 1e-6}", "rl.advantage.options", "unknown option 'epss' (did you mean 'eps'?)"),
    ("rl.advantage.name=grop", "rl.advantage.name", "unknown advantage estimator 'grop' (did you mean 'grpo'?)"),
    ("rl.aggregation=token_mean", "rl.aggregation", "unknown aggregation 'token_mean' (did you mean 'token-mean'?)"),
    ("data.sampler_options={flor: 0.1}", "data.sampler_options", "unknown option 'flor'"),
    ("data.sampler=prioritised", "data.sampler", "unknown sampler 'prioritised' (did you mean 'prioritized'?)"),
    ("data.task=arithm", "data.task", "unknown task 'arithm' (did you mean 'arith'?)"),
    ("data.task_options={parts: 3}", "data.task_options", "takes no task_options"),
    ("model.path=runs/no/such/model", "model.path", "model path does not exist: runs/no/such/model"),
    ("rl.length_penalty_warmup=5", "rl.length_penalty_warmup", "'k15_length', which is not one of the recipe's"),
    # a source beside a synthetic task trained on the synthetic task, silently
    ("data.source=my.jsonl", "data.source", "data.task is 'arith', a synthetic task that"),
    ("data.columns={problem: question}", "data.columns", "set data.task=dataset to train on it"),
    ("eval.source=aime.jsonl", "eval.source", "would ignore it"),
    ("cluster.rollout_workers=4", "cluster.rollout_workers", "only applies to Ray runs, and cluster.backend is"),
])
def test_dry_run_rejects_naming_the_key(capsys, override, key, says):
    rc, err = dry_run(capsys, override)
    assert rc == 2
    assert f"override '{override}': '{key}': " in err and says in err, err
    assert "Traceback" not in err


def test_dry_run_rejects_nccl_weights_from_several_trainer_ranks(capsys):
    rc, err = dry_run(capsys, "cluster.weight_transport=nccl", "trainer.strategy=fsdp", "trainer.ranks=2")
    assert rc == 2 and "'cluster.weight_transport': nccl broadcasts" in err and "object_store" in err, err
    rc, err = dry_run(capsys, "cluster.weight_transport=nccl", "cluster.backend=ray")
    assert "cluster.weight_transport" not in err, err


def test_ray_keys_on_the_command_line_of_a_local_run_are_refused_unless_local_is_explicit(capsys):
    """The tiny recipe is local; `cluster.rollout_workers=4 rl.max_off_policy_steps=1` given on the command line ran
    one local process without a word. The recipe file may keep cluster keys (one recipe, both runtimes), and an
    explicit cluster.backend=local says the user knows."""
    ray_keys = ["cluster.rollout_workers=4", "rl.max_off_policy_steps=1", "rl.rollout_correction.rollout_is=token"]
    rc, err = dry_run(capsys, *ray_keys)
    assert rc == 2 and "'cluster.rollout_workers': only applies to Ray runs" in err, err
    assert "'rl.max_off_policy_steps': only applies to Ray runs" in err and "add cluster.backend=ray" in err
    rc, err = dry_run(capsys, *ray_keys, "cluster.backend=local")
    assert rc == 0 and "only applies to Ray runs" not in err, err
    assert "only applies" not in dry_run(capsys, *ray_keys, "cluster.backend=ray")[1]


def test_dry_run_rejects_vllm_options_on_the_hf_engine(capsys):
    """A recipe with vLLM engine arguments switched to rollout.engine=hf failed only when the engine was built (in
    Ray mode as a worker's creation traceback); the dry run names the key and the option now."""
    partial = str(ROOT / "recipes" / "tiny" / "arith-moe-partial.yaml")  # engine_options: {enable_chunked_prefill}
    rc = main(["train", partial, "rollout.engine=hf", "--dry-run"])
    err = capsys.readouterr().err
    assert rc == 2 and "arith-moe-partial.yaml:" in err and "'rollout.engine_options': rollout engine 'hf': " \
        "unknown option 'enable_chunked_prefill'" in err, err
    assert main(["train", partial, "rollout.engine=hf", "rollout.engine_options={batch_size: 8}", "--dry-run"]) == 0


def test_dry_run_rejects_a_missing_data_file(capsys):
    rc, err = dry_run(capsys, "data.task=dataset", "data.source=no/such/problems.jsonl")
    assert rc == 2 and "'data.source': data file not found: no/such/problems.jsonl" in err


@pytest.mark.parametrize("sampling", [["rollout.top_p=0.9"], ["rollout.top_k=20"]])
@pytest.mark.parametrize("reader", [["rl.rollout_correction.rollout_is=token"], ["rl.kl_coef=0.01", "rl.kl_in=reward"]])
def test_dry_run_rejects_truncated_sampling_with_engine_logprobs(capsys, sampling, reader):
    rc, err = dry_run(capsys, *sampling, *reader)
    key = sampling[0].split("=")[0]
    assert rc == 2 and f"'{key}': top_p=" in err and "biased" in err
    assert ("rl.rollout_correction" if len(reader) == 1 else "rl.kl_in=reward") in err


def test_truncated_sampling_alone_is_allowed(capsys):
    rc, err = dry_run(capsys, "rollout.top_p=0.9")
    assert rc == 0, err


def test_all_problems_are_reported_at_once_with_file_and_line(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"base: {RECIPE}\nrewards:\n  - name: mathh\nrl:\n"
                      "  loss: {name: ppo_clip, options: {x: 1}}\n")
    rc = main(["train", str(recipe), "--dry-run"])
    err = capsys.readouterr().err
    assert rc == 2 and "2 problems in the recipe" in err
    assert f"{recipe}:3: 'rewards[0].name'" in err and f"{recipe}:5: 'rl.loss.options'" in err


def test_every_shipped_recipe_validates():
    for path in sorted((ROOT / "recipes" / "tiny").glob("*.yaml")):
        validate_recipe(load_recipe(path))  # raises ConfigError naming the problem


def test_validation_runs_in_train_too():
    """Python callers of pipeline.train get the same checks, before any work."""
    from longcot.pipeline import train

    with pytest.raises(ConfigError, match="unknown task 'arithm'"):
        train(load_recipe(RECIPE, ["data.task=arithm", "out_dir=/nonexistent/never/created"]))
    assert not Path("/nonexistent/never/created").exists()


def test_reward_modules_from_the_cwd_and_by_path(tmp_path, monkeypatch, capsys):
    (tmp_path / "validate_rewards_mod.py").write_text(
        "from longcot.rewards import reward\n\n@reward('test_shortish')\ndef shortish(sample, *, limit: int = 5):\n"
        "    return float(len(sample.response_text) <= limit)\n")
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "extra.py").write_text("def longish(sample):\n"
                                               "    return float(len(sample.response_text) > 5)\n")
    monkeypatch.chdir(tmp_path)
    rc, err = dry_run(capsys, "reward_modules=[validate_rewards_mod]",
                      "rewards=[{name: test_shortish, options: {limit: 3}}, {name: 'lib/extra.py:longish'}]")
    assert rc == 0, err
    rc, err = dry_run(capsys, "reward_modules=[myrewardz]")
    assert rc == 2 and "'reward_modules[0]': cannot import module 'myrewardz'" in err
    rc, err = dry_run(capsys, "rewards=[{name: test_shortish, options: {limt: 3}}]",
                      "reward_modules=[validate_rewards_mod]")
    assert rc == 2 and "unknown option 'limt' (did you mean 'limit'?)" in err


def test_a_reward_module_that_fails_to_import_names_its_file_and_line(tmp_path, monkeypatch, capsys):
    """A typo in the user's reward file: one line with their file and line, not a traceback through importlib."""
    (tmp_path / "typo_rewards.py").write_text("from longcot.rewards import reward\n\ndef broken(:\n")
    (tmp_path / "nameerr_rewards.py").write_text("x = 1\ny = undefined_name + 1\n")
    monkeypatch.chdir(tmp_path)
    rc, err = dry_run(capsys, "reward_modules=[typo_rewards.py]")
    assert rc == 2 and f"importing typo_rewards.py failed: {tmp_path / 'typo_rewards.py'}:3: SyntaxError: " in err
    assert "def broken(:" in err and "Traceback" not in err, err
    rc, err = dry_run(capsys, "reward_modules=[nameerr_rewards]")  # by module name, from the cwd
    assert rc == 2 and "nameerr_rewards.py:2: NameError: name 'undefined_name' is not defined" in err, err


def test_version_and_python_m(capsys):
    import subprocess
    import sys

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("longcot ")
    out = subprocess.run([sys.executable, "-m", "longcot", "--version"], capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("longcot ")


def test_dry_run_prints_the_resolved_recipe(capsys):
    rc = main(["train", RECIPE, "seed=3", "--dry-run"])
    out = capsys.readouterr().out
    assert rc == 0 and "name: arith-moe\nseed: 3\n" in out and "reward_modules: []" in out


@pytest.mark.parametrize("override, key, says", [
    ("rl.optimizer=muonclp", "rl.optimizer", "did you mean 'muonclip'"),
    ("sft.optimizer=adamw_torch", "sft.optimizer", "unknown optimizer"),
    ("rl.optimizer_options={momentm: 0.9}", "rl.optimizer_options", "momentm")])
def test_dry_run_rejects_optimizer_names_and_options(capsys, override, key, says):
    rc, err = dry_run(capsys, *(["rl.optimizer=muon"] if "options" in override else []), override)
    assert rc == 2 and f"'{key}'" in err and says in err


def test_dry_run_renders_chat_prompts_of_the_tiny_model_built_with_a_chat_template(capsys):
    """The dry run built the tiny tokenizer without the template that model.build_overrides.chat_template gives the
    run's: it refused a recipe that runs. Without the template it says what to do."""
    assert main(["train", RECIPE, "data.template=chat", "model.build_overrides.chat_template=true", "--dry-run"]) == 0
    assert "prompt as the model sees it: '<|im_start|>user\\n" in capsys.readouterr().out
    rc, err = dry_run(capsys, "data.template=chat")
    assert rc == 2 and "model.build_overrides.chat_template=true" in err, err


def test_a_reward_module_flag_is_named_as_the_origin_of_its_error(capsys):
    """An unimportable --reward-module was reported as coming from '<defaults>' (the source map knew only files and
    key=value overrides)."""
    rc, err = dry_run(capsys, "--reward-module", "no_such_rewards_module")
    assert rc == 2
    assert "--reward-module no_such_rewards_module: 'reward_modules[0]': cannot import module" in err, err


def test_a_run_directory_given_as_the_model_points_at_its_checkpoint(tmp_path, capsys):
    run = tmp_path / "myrun"
    (run / "checkpoints" / "final").mkdir(parents=True)
    (run / "checkpoints" / "final" / "config.json").write_text("{}")
    rc, err = dry_run(capsys, f"model.path={run}")
    assert rc == 2 and f"did you mean {run / 'checkpoints' / 'final'}?" in err, err
