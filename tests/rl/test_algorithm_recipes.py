"""The tiny algorithm recipes load, and their algorithm options fit the registered functions."""

from pathlib import Path

import pytest

from longcot.config import load_recipe
from longcot.config.loader import deep_merge
from longcot.registry import check_options
from longcot.rl.advantages import ADVANTAGES
from longcot.rl.losses import AGGREGATIONS, LOSSES

TINY = Path(__file__).resolve().parents[2] / "recipes" / "tiny"


@pytest.mark.parametrize("variant,loss,adv", [("dapo", "ppo_clip", "grpo"), ("gspo", "gspo", "grpo"),
                                              ("cispo", "cispo", "grpo"), ("k15", "k15", "k15")])
def test_variant_recipe_loads(variant, loss, adv):
    r = load_recipe(TINY / f"arith-moe-{variant}.yaml")
    assert (r.name, r.rl.loss.name, r.rl.advantage.name) == (f"arith-moe-{variant}", loss, adv)
    base = load_recipe(TINY / "arith-moe.yaml")  # everything else is inherited from the base recipe
    assert (r.threads, r.rl.steps, r.sft.num_examples, r.data.max_ops) == \
        (base.threads, base.rl.steps, base.sft.num_examples, base.data.max_ops)
    check_options(LOSSES.get(r.rl.loss.name), r.rl.loss.options, where="rl.loss")
    check_options(ADVANTAGES.get(r.rl.advantage.name), r.rl.advantage.options, where="rl.advantage")
    assert r.rl.aggregation in AGGREGATIONS


def test_changing_the_function_name_drops_the_base_options():
    base = {"rl": {"loss": {"name": "ppo_clip", "options": {"clip_low": 0.2}}, "lr": 1.0}}
    top = {"rl": {"loss": {"name": "k15", "options": {"tau": 0.1}}}}
    assert deep_merge(base, top) == {"rl": {"loss": {"name": "k15", "options": {"tau": 0.1}}, "lr": 1.0}}
    same = {"rl": {"loss": {"name": "ppo_clip", "options": {"clip_high": 0.28}}}}
    assert deep_merge(base, same)["rl"]["loss"]["options"] == {"clip_low": 0.2, "clip_high": 0.28}
    assert deep_merge(base, {"rl": {"loss": {"name": "gspo"}}})["rl"]["loss"] == {"name": "gspo"}
    # the recipe's own name is an ordinary key: a child recipe with another name still inherits everything
    assert deep_merge({"name": "a", "seed": 1}, {"name": "b"}) == {"name": "b", "seed": 1}
