"""The long2short section is validated with the recipe: bad values fail with the key, before any work."""

from pathlib import Path

import pytest

from longcot.config import ConfigError, load_recipe

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("recipe", ["merge", "srs", "dpo", "rl"])
def test_the_tiny_recipes_load_and_share_the_long_models_data(recipe):
    r = load_recipe(ROOT / f"recipes/tiny/long2short-{recipe}.yaml")
    long = load_recipe(ROOT / "recipes/tiny/long2short-long.yaml")
    assert r.long2short.long_model == "runs/l2s-long/checkpoints/sft"
    # the same held-out problems, evaluated the same way (the rl recipe also evaluates during its phase)
    assert r.data == long.data
    assert (r.eval.n, r.eval.temperature, r.eval.max_tokens, r.eval.num_problems) == \
        (long.eval.n, long.eval.temperature, long.eval.max_tokens, long.eval.num_problems)


@pytest.mark.parametrize("override, match", [
    ("long2short.method=distill", "expected one of"),
    ("long2short.merge.long_weight=1.5", "long_weight must be in"),
    ("long2short.dpo.loss_weights=[1.0]", "1 loss_weights for 2 loss types"),
    ("long2short.dpo.long_ratio=0.5", "long_ratio >= 1"),
    ("long2short.samples.n=0", "num_problems, n"),
    ("long2short.sft.lr=0", "lr > 0"),
    ("long2short.dpo.wrong=shorter", "expected one of"),
    ("long2short.merge.long_wieght=0.5", "did you mean 'long_weight'"),
])
def test_bad_values_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_recipe(ROOT / "recipes/tiny/long2short-dpo.yaml", [override])


def test_cli_takes_flags_between_the_overrides(tmp_path, capsys):
    """`longcot long2short RECIPE seed=1 --dry-run key=value`: a plain argparse parse refused the overrides after
    the flag ("unrecognized arguments")."""
    from longcot.long2short.cli import run_main
    from longcot.policies.build import build_tiny_moe

    long_model = build_tiny_moe(tmp_path / "long")
    code = run_main([str(ROOT / "recipes/tiny/long2short-merge.yaml"), "seed=1", "--dry-run",
                     "long2short.merge.long_weight=0.7", f"long2short.long_model={long_model}"])
    out = capsys.readouterr().out
    assert code == 0 and "seed: 1" in out and "long_weight: 0.7" in out
