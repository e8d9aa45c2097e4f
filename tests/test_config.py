"""Recipe loading: unknown keys, wrong types, overrides and inheritance fail early with file, line and key."""

from pathlib import Path

import pytest

from longcot.cli import main as cli_main
from longcot.config import ConfigError, load_recipe

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "recipes" / "tiny" / "arith-moe.yaml"


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_demo_recipe_loads_with_overrides():
    r = load_recipe(DEMO, ["rl.steps=3", "seed=7", "rl.lr=1e-5", "rollout.stop=[x, y]"])
    assert (r.rl.steps, r.seed, r.rl.lr, r.rollout.stop) == (3, 7, 1e-5, ["x", "y"])
    assert r.rollout.engine == "vllm" and r.rewards[0].name == "math"


def test_unknown_key_names_file_line_and_closest(tmp_path):
    p = write(tmp_path, "r.yaml", "name: x\nrl:\n  steps: 3\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as e:
        load_recipe(p)
    msg = str(e.value)
    assert f"{p}:4" in msg and "'rl.lrr'" in msg and "did you mean 'lr'" in msg


def test_wrong_type_says_what_was_expected(tmp_path):
    p = write(tmp_path, "r.yaml", "rl:\n  steps: many\n")
    with pytest.raises(ConfigError, match=r"r.yaml:2: 'rl.steps': expected int, got 'many'"):
        load_recipe(p)


def test_literal_choice_is_checked(tmp_path):
    p = write(tmp_path, "r.yaml", "rollout:\n  engine: vlm\n")
    with pytest.raises(ConfigError, match=r"expected one of \['vllm', 'hf'\].*did you mean 'vllm'"):
        load_recipe(p)


def test_override_of_unknown_key_fails_with_suggestion():
    with pytest.raises(ConfigError, match=r"override 'rl.stesp=3'.*did you mean 'steps'"):
        load_recipe(DEMO, ["rl.stesp=3"])


def test_override_without_equals_is_rejected():
    with pytest.raises(ConfigError, match="expected key=value"):
        load_recipe(DEMO, ["rl.steps"])


def test_base_inheritance_and_cycle(tmp_path):
    write(tmp_path, "base.yaml", "name: base\nrl:\n  steps: 5\n  lr: 0.5\n")
    child = write(tmp_path, "child.yaml", "base: base.yaml\nrl:\n  steps: 9\n")
    r = load_recipe(child)
    assert (r.name, r.rl.steps, r.rl.lr) == ("base", 9, 0.5)
    write(tmp_path, "a.yaml", "base: b.yaml\n")
    write(tmp_path, "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_recipe(tmp_path / "a.yaml")


def test_reward_entries_are_typed(tmp_path):
    p = write(tmp_path, "r.yaml", "rewards:\n  - name: math\n    wieght: 2\n")
    with pytest.raises(ConfigError, match=r"r.yaml:3: unknown key 'rewards\[0\].wieght'.*did you mean 'weight'"):
        load_recipe(p)


def test_cross_field_validation(tmp_path):
    p = write(tmp_path, "r.yaml", "data:\n  num_heldout: 10\neval:\n  num_problems: 20\n")
    with pytest.raises(ConfigError, match="num_problems"):
        load_recipe(p)
    with pytest.raises(ConfigError, match="eval.num_problems must be >= 1"):  # was a traceback after SFT
        load_recipe(None, ["eval.num_problems=0"])


def test_ray_serves_one_frozen_checkpoint():
    """Each Ray rollout worker builds one frozen engine beside the policy's: two frozen checkpoints are refused
    there, at load time; one is fine (and any number in the local runtime)."""
    wide = DEMO.parent / "parl-wide-specialist.yaml"
    two = ["agents.subagents.calc2={policy: frozen, path: a}", "agents.subagents.calc.path=b"]
    with pytest.raises(ConfigError, match="frozen roles on several checkpoints"):
        load_recipe(wide, ["cluster.backend=ray", "rl.max_off_policy_steps=0", *two])
    load_recipe(wide, ["cluster.backend=ray"])
    load_recipe(wide, two)


def test_logprobs_every_must_not_be_negative():
    with pytest.raises(ConfigError, match="rollout.logprobs_every must be >= 0"):
        load_recipe(DEMO, ["rollout.logprobs_every=-1"])


def test_cli_reports_config_error_before_any_work(capsys):
    assert cli_main(["train", str(DEMO), "rl.lrr=1"]) == 2
    assert "did you mean 'lr'" in capsys.readouterr().err


def test_cli_dry_run_prints_resolved_recipe(capsys):
    assert cli_main(["train", str(DEMO), "rl.steps=2", "--dry-run"]) == 0
    assert "steps: 2" in capsys.readouterr().out
