"""Model merging is exact: a 0.5 merge of two real checkpoints equals the mean of their tensors."""

import pytest
import torch

from longcot.long2short.merge import merge_checkpoints, merge_state_dicts
from longcot.policies.build import build_tiny_moe
from longcot.policies.load import load_policy, load_tokenizer


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge")
    return build_tiny_moe(root / "a", seed=0), build_tiny_moe(root / "b", seed=1)


def test_half_merge_of_two_checkpoints_is_the_mean_of_their_tensors(two_checkpoints, tmp_path):
    a_path, b_path = two_checkpoints
    out = merge_checkpoints([a_path, b_path], [0.5, 0.5], tmp_path / "merged")
    a, b, m = (load_policy(p).state_dict() for p in (a_path, b_path, out))
    assert set(m) == set(a) and len(m) == 47  # fused expert tensors: 47 in all
    differing = 0
    for key, t in m.items():
        assert t.dtype == a[key].dtype
        assert torch.equal(t, (a[key] + b[key]) / 2), key  # bit for bit, not approximately
        differing += not torch.equal(a[key], b[key])
    assert differing >= 20  # the two inputs really differ (else the test would prove nothing)
    assert load_tokenizer(out).eos_token_id == load_tokenizer(a_path).eos_token_id


def test_weights_interpolate_and_the_ends_are_the_inputs():
    a = {"w": torch.tensor([1.0, -2.0, 3.0]), "step": torch.tensor([7])}
    b = {"w": torch.tensor([3.0, 2.0, -1.0]), "step": torch.tensor([7])}
    assert torch.equal(merge_state_dicts([a, b], [0.25, 0.75])["w"], torch.tensor([2.5, 1.0, 0.0]))
    assert torch.equal(merge_state_dicts([a, b], [1.0, 0.0])["w"], a["w"])
    assert torch.equal(merge_state_dicts([a, b], [0.5, 0.5])["step"], torch.tensor([7]))  # integer buffer copied


@pytest.mark.parametrize("b, weights, match", [
    ({"w": torch.zeros(3)}, [0.6, 0.6], "sum to 1"),
    ({"v": torch.zeros(3)}, [0.5, 0.5], "different tensors"),
    ({"w": torch.zeros(4)}, [0.5, 0.5], "'w' is"),
    ({"w": torch.zeros(3, dtype=torch.float64)}, [0.5, 0.5], "'w' is"),
])
def test_mismatched_inputs_are_errors(b, weights, match):
    with pytest.raises(ValueError, match=match):
        merge_state_dicts([{"w": torch.ones(3)}, b], weights)


def test_integer_buffers_must_agree():
    with pytest.raises(ValueError, match="non-floating"):
        merge_state_dicts([{"i": torch.tensor([1])}, {"i": torch.tensor([2])}], [0.5, 0.5])


def test_checkpoints_of_different_architectures_are_refused(two_checkpoints, tmp_path):
    other = build_tiny_moe(tmp_path / "c", seed=0, num_hidden_layers=2)
    with pytest.raises(ValueError, match="architecture"):
        merge_checkpoints([two_checkpoints[0], other], [0.5, 0.5], tmp_path / "m")
