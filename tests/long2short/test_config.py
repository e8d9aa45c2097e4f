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
