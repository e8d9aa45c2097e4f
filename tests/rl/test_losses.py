"""Policy losses and aggregation modes against hand arithmetic, values and gradients (autograd)."""

import math

import pytest
import torch

from longcot.rl.losses import AGGREGATIONS, LOSSES, LossBatch, aggregate, policy_loss, resets_optimizer

E = math.e
LN2 = math.log(2.0)


def t(x):
    return torch.tensor(x, dtype=torch.float64)


def batch(logprobs, old, adv, mask=None, **kw):
    """A LossBatch whose logprobs are a leaf with grad, so the test can read d loss / d logprob."""
    lp = t(logprobs).requires_grad_(True)
    mask = t(mask) if mask is not None else torch.ones_like(lp)
    extra = {k: t(v) for k, v in kw.items()}
    return LossBatch(logprobs=lp, old_logprobs=t(old), advantages=t(adv), mask=mask, **extra)


def grad_of(loss, b):
    (g,) = torch.autograd.grad(loss, b.logprobs)
    return g


def close(a, b, tol=1e-6):
    assert torch.allclose(torch.as_tensor(a, dtype=torch.float64), t(b), atol=tol), a


# ---------------------------------------------------------------- aggregation
PT = t([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
MK = t([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])


@pytest.mark.parametrize("mode,expected", [
    ("token-mean", (1 + 2 + 3 + 4) / 4),                   # 2.5
    ("seq-mean-token-mean", ((1 + 2 + 3) / 3 + 4 / 1) / 2),  # 3.0
    ("seq-mean-token-sum", ((1 + 2 + 3) + 4) / 2),           # 5.0
    ("seq-mean-token-sum-norm", ((1 + 2 + 3) / 4 + 4 / 4) / 2),  # 1.25 with max_len 4
])
def test_aggregation_by_hand(mode, expected):
    assert float(aggregate(PT, MK, mode, max_len=4)) == pytest.approx(expected)


@pytest.mark.parametrize("mode,expected", [
    ("token-mean", (1 + 2) / 2), ("seq-mean-token-mean", 1.5), ("seq-mean-token-sum", 3.0),
    ("seq-mean-token-sum-norm", 3.0 / 2),
])
def test_aggregation_fully_masked_sequence_is_not_counted(mode, expected):
    # row 2 has all tokens masked: its 5s must not leak in and it must not count as a sequence
    assert float(aggregate(t([[1.0, 2.0], [5.0, 5.0]]), t([[1.0, 1.0], [0.0, 0.0]]), mode, max_len=2)) == expected


@pytest.mark.parametrize("mode", AGGREGATIONS)
def test_aggregation_all_masked_is_zero_not_nan(mode):
    x = t([[3.0, 4.0]]).requires_grad_(True)
    out = aggregate(x, t([[0.0, 0.0]]), mode, max_len=2)
    (g,) = torch.autograd.grad(out, x)
    assert float(out.detach()) == 0.0 and g.abs().sum() == 0


def test_aggregation_global_denominators():
    # micro-batch of a step with 10 tokens / 4 sequences in all: sums 6 and 4 over those denominators
    assert float(aggregate(PT, MK, "token-mean", total_tokens=10)) == pytest.approx(10 / 10)
    assert float(aggregate(PT, MK, "seq-mean-token-sum", total_seqs=4)) == pytest.approx(10 / 4)


def test_aggregation_errors():
    with pytest.raises(ValueError, match="needs max_len"):
        aggregate(PT, MK, "seq-mean-token-sum-norm")
    with pytest.raises(ValueError, match="unknown loss aggregation 'tokenmean'"):
        aggregate(PT, MK, "tokenmean")


# ---------------------------------------------------------------- ppo_clip
def test_ppo_clip_single_token_by_hand():
    # tok1: r = e^0.5 = 1.6487, A = 1  -> -min(1.6487, 1.2) = -1.2 (clipped, no gradient)
    # tok2: r = 0.5, A = -1            -> -min(-0.5, clip(0.5, .8, 1.2) * -1 = -0.8) = 0.8 (clipped, no grad)
    # tok3: r = 1, A = 2               -> -2, d/dlogp = -A r = -2
    b = batch([[0.5], [-LN2], [0.0]], [[0.0], [0.0], [0.0]], [[1.0], [-1.0], [2.0]])
    per_tok, m = LOSSES.get("ppo_clip")(b)
    close(per_tok, [[-1.2], [0.8], [-2.0]])
    close(grad_of(per_tok.sum(), b), [[0.0], [0.0], [-2.0]])
    assert m["clip_frac"] == pytest.approx(2 / 3)


def test_ppo_clip_higher_and_dual_clip_by_hand():
    # clip-higher: r = e^0.5, A = 1 -> -min(1.6487, 1.28) = -1.28
    b = batch([[0.5]], [[0.0]], [[1.0]])
    close(LOSSES.get("ppo_clip")(b, clip_high=0.28)[0], [[-1.28]])
    # dual clip c = 3: r = e^2 = 7.389, A = -1 -> plain loss = -min(-7.389, -1.2) = 7.389; bounded at -c A = 3
    b = batch([[2.0]], [[0.0]], [[-1.0]])
    close(LOSSES.get("ppo_clip")(b)[0], [[E**2]])
    loss = LOSSES.get("ppo_clip")(b, dual_clip=3.0)[0]
    close(loss, [[3.0]])
    close(grad_of(loss.sum(), b), [[0.0]])
    with pytest.raises(ValueError, match="dual_clip must be > 1"):
        LOSSES.get("ppo_clip")(b, dual_clip=0.5)


# ---------------------------------------------------------------- gspo
def test_gspo_sequence_by_hand():
    # log-ratios [0.1, -0.3] -> mean -0.1 -> s = e^-0.1 = 0.904837, inside no clip range [0.9997, 1.0004]
    # A = +1: -min(s, clip(s)=0.9997) = -s; seq-mean-token-mean loss = -s; d/dlogp_t = -s * 1/2 = -0.452419
    b = batch([[0.1, -0.3]], [[0.0, 0.0]], [[1.0, 1.0]])
    loss, m = policy_loss(b, "gspo", agg="seq-mean-token-mean")
    s = math.exp(-0.1)
    assert loss.item() == pytest.approx(-s)
    close(grad_of(loss, b), [[-s / 2, -s / 2]])
    # A = -1: -min(-s, -0.9997) = 0.9997 (clipped branch) -> no gradient
    b = batch([[0.1, -0.3]], [[0.0, 0.0]], [[-1.0, -1.0]])
    loss, m = policy_loss(b, "gspo", agg="seq-mean-token-mean")
    assert loss.item() == pytest.approx(1 - 3e-4)
    close(grad_of(loss, b), [[0.0, 0.0]])
    assert m["clip_frac"] == 1.0


def test_gspo_token_variant_matches_sequence_for_constant_advantage():
    lp, old, adv, mask = [[0.1, -0.3, 0.2]], [[0.0, 0.0, 0.0]], [[0.5, 0.5, 0.5]], [[1.0, 1.0, 0.0]]
    bs, bt = batch(lp, old, adv, mask), batch(lp, old, adv, mask)
    ls, _ = policy_loss(bs, "gspo", agg="seq-mean-token-mean")
    lt, _ = policy_loss(bt, "gspo", {"variant": "token"}, agg="seq-mean-token-mean")
    # masked third token is ignored: s = e^((0.1 - 0.3)/2) = e^-0.1, loss = -0.5 s, grad -0.5 s / 2 on live tokens
    s = math.exp(-0.1)
    assert ls.item() == pytest.approx(-0.5 * s) and lt.item() == pytest.approx(-0.5 * s)
    close(grad_of(ls, bs), [[-0.25 * s, -0.25 * s, 0.0]])
    close(grad_of(lt, bt), [[-0.25 * s, -0.25 * s, 0.0]])


def test_gspo_single_token_is_token_ratio():
    # one token: s = r = e^0.0002 (inside [0.9997, 1.0004]); A = 2 -> loss -2 e^0.0002
    b = batch([[0.0002]], [[0.0]], [[2.0]])
    loss, _ = policy_loss(b, "gspo", agg="seq-mean-token-mean")
    assert loss.item() == pytest.approx(-2 * math.exp(0.0002))


# ---------------------------------------------------------------- cispo
def test_cispo_by_hand():
    # tok1: r = 2 -> w = clip(2, 0, 1.28) = 1.28; A = 1, logp = ln2 - 1 (old = -1) -> -1.28 * (ln2 - 1)
    #        gradient -w A = -1.28: CISPO keeps the gradient of a truncated token (PPO would zero it)
    # tok2: r = 0.5 -> w = 0.5 (no lower bound); A = -1 -> loss 0.5 * logp, gradient +0.5
    b = batch([[LN2 - 1.0], [-LN2 - 1.0]], [[-1.0], [-1.0]], [[1.0], [-1.0]])
    per_tok, m = LOSSES.get("cispo")(b)
    close(per_tok, [[-1.28 * (LN2 - 1.0)], [0.5 * (-LN2 - 1.0)]])
    close(grad_of(per_tok.sum(), b), [[-1.28], [0.5]])
    assert m["clip_frac"] == pytest.approx(0.5)


# ---------------------------------------------------------------- k1.5 / K2.5
# Group of k = 2 samples from pi_old, rewards [1, 0] -> r_bar = 0.5 -> A = [0.5, -0.5]; tau = 0.5.
# seq 1: logp [-1.0, -2.0], old [-1.1, -2.3] -> d = [0.1, 0.3], D1 = 0.4
# seq 2: logp [-0.5, -0.7, -9], old [-0.5, -0.5, -9], third token masked -> d = [0, -0.2], D2 = -0.2
K15 = dict(logprobs=[[-1.0, -2.0, 0.0], [-0.5, -0.7, -9.0]], old=[[-1.1, -2.3, 0.0], [-0.5, -0.5, -9.0]],
           adv=[[0.5, 0.5, 0.5], [-0.5, -0.5, -0.5]], mask=[[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])


def test_k15_gradient_equals_design_formula():
    # DESIGN: grad J = (1/k) sum_j [grad log pi(y_j)(r_j - r_bar) - (tau/2) grad (log pi(y_j)/pi_old(y_j))^2].
    # d log pi(y_j) / d logp_{j,t} = 1, so dJ/dlogp_{j,t} = (1/2)[A_j - tau D_j]; the loss is -J:
    # seq 1: -(1/2)(0.5 - 0.5 * 0.4) = -0.15;  seq 2: -(1/2)(-0.5 - 0.5 * -0.2) = +0.2; masked tokens 0.
    b = batch(K15["logprobs"], K15["old"], K15["adv"], K15["mask"])
    loss, m = policy_loss(b, "k15", {"tau": 0.5}, agg="seq-mean-token-sum")
    close(grad_of(loss, b), [[-0.15, -0.15, 0.0], [0.2, 0.2, 0.0]])
    # value: (1/2) sum_j [-A_j log pi(y_j) + (tau/2) D_j^2]
    #      = (1/2)[-0.5 * -3.0 + 0.25 * 0.16 + 0.5 * -1.2 + 0.25 * 0.04] = (1/2)(0.95) = 0.475
    assert loss.item() == pytest.approx(0.475)
    assert m["log_ratio_sq"] == pytest.approx((0.16 + 0.04) / 2)


def test_k15_token_level_gradient_by_hand():
    # per token: d/dlogp = -(1/k)[A_j - tau d_t]
    # seq 1: -(0.5 - 0.05)/2, -(0.5 - 0.15)/2; seq 2: -(-0.5 - 0)/2, -(-0.5 + 0.1)/2
    b = batch(K15["logprobs"], K15["old"], K15["adv"], K15["mask"])
    loss, _ = policy_loss(b, "k15", {"tau": 0.5, "level": "token"}, agg="seq-mean-token-sum")
    close(grad_of(loss, b), [[-0.225, -0.175, 0.0], [0.25, 0.2, 0.0]])


def test_k15_at_iteration_start_is_plain_policy_gradient():
    # pi = pi_old (first gradient step of the iteration): the squared term and its gradient vanish
    b = batch([[-1.0, -2.0]], [[-1.0, -2.0]], [[0.3, 0.3]])
    loss, _ = policy_loss(b, "k15", {"tau": 10.0}, agg="seq-mean-token-sum")
    close(grad_of(loss, b), [[-0.3, -0.3]])


def test_k25_masks_tokens_outside_log_ratio_range():
    # alpha = -0.15, beta = 0.15: seq 1 token 2 (d = 0.3) and seq 2 token 2 (d = -0.2) get no gradient;
    # the rest as in the token-level k15 case: -0.225 and -(-0.5 - 0.5 * 0)/2 = 0.25
    b = batch(K15["logprobs"], K15["old"], K15["adv"], K15["mask"])
    opts = {"tau": 0.5, "alpha": -0.15, "beta": 0.15, "level": "token"}
    loss, m = policy_loss(b, "k25", opts, agg="seq-mean-token-sum")
    close(grad_of(loss, b), [[-0.225, 0.0, 0.0], [0.25, 0.0, 0.0]])
    assert m["grad_masked_frac"] == pytest.approx(0.5)


def test_mirror_descent_losses_ask_for_optimizer_reset():
    assert resets_optimizer("k15") and resets_optimizer("k25")
    assert LOSSES.get("k15").reset_optimizer is True  # what the trainer reads
    assert not resets_optimizer("ppo_clip") and not resets_optimizer("gspo")


# ---------------------------------------------------------------- policy_loss: TIS, KL, entropy, options
def test_tis_by_hand():
    # ratio 1, A = 1 -> per-token -1. tok1: w = min(e^(-1 - -1.5), 1.2) = min(1.6487, 1.2) = 1.2
    # tok2: w = e^(-1 - -0.5) = e^-0.5 = 0.60653. token-mean = -(1.2 + 0.60653) / 2; gap = (0.5 + 0.5) / 2
    b = batch([[-1.0, -1.0]], [[-1.0, -1.0]], [[1.0, 1.0]], rollout_logprobs=[[-1.5, -0.5]])
    loss, m = policy_loss(b, tis_cap=1.2)
    assert loss.item() == pytest.approx(-(1.2 + math.exp(-0.5)) / 2)
    assert m["rollout_logprob_gap"] == pytest.approx(0.5) and m["tis_capped_frac"] == 0.5


def test_kl_in_loss_and_entropy_by_hand():
    # ratio 1, A = 1 -> -1; d = logp - ref = 0.5 -> k3 = e^-0.5 - 1 + 0.5 = 0.106531; + 0.1 * k3
    # d k3 / d logp = 1 - e^-d = 0.393469 -> grad = -1 + 0.1 * 0.393469; entropy bonus: - 0.01 * 2.0
    b = batch([[-1.0]], [[-1.0]], [[1.0]], ref_logprobs=[[-1.5]], entropy=[[2.0]])
    loss, m = policy_loss(b, kl_coef=0.1, kl_estimator="k3", entropy_coef=0.01)
    k3 = math.exp(-0.5) - 0.5
    assert loss.item() == pytest.approx(-1 + 0.1 * k3 - 0.02)
    close(grad_of(loss, b), [[-1 + 0.1 * (1 - math.exp(-0.5))]])
    assert m["kl"] == pytest.approx(k3) and m["entropy"] == 2.0


@pytest.mark.parametrize("est,value,grad", [("k1", 0.5, 1.0), ("k2", 0.125, 0.5)])
def test_kl_in_loss_other_estimators(est, value, grad):
    # d = 0.5: k1 = d (grad 1), k2 = d^2/2 = 0.125 (grad d = 0.5)
    b = batch([[-1.0]], [[-1.0]], [[0.0]], ref_logprobs=[[-1.5]])
    loss, _ = policy_loss(b, kl_coef=1.0, kl_estimator=est)
    assert loss.item() == pytest.approx(value)
    close(grad_of(loss, b), [[grad]])


def test_missing_inputs_are_errors_not_silent():
    b = batch([[-1.0]], [[-1.0]], [[1.0]])
    with pytest.raises(ValueError, match="no ref_logprobs"):
        policy_loss(b, kl_coef=0.1)
    with pytest.raises(ValueError, match="no entropy"):
        policy_loss(b, entropy_coef=0.1)
    with pytest.raises(ValueError, match="no rollout_logprobs"):
        policy_loss(b, tis_cap=2.0)


def test_unknown_option_names_key_and_closest():
    b = batch([[-1.0]], [[-1.0]], [[1.0]])
    with pytest.raises(KeyError, match=r"loss\[ppo_clip\]: unknown option 'clip_hgh' \(did you mean 'clip_high'"):
        policy_loss(b, "ppo_clip", {"clip_hgh": 0.28})
    with pytest.raises(KeyError, match="did you mean 'gspo'"):
        policy_loss(b, "gpso")


ALL_LOSSES = [("ppo_clip", {}), ("gspo", {}), ("gspo", {"variant": "token"}), ("cispo", {}), ("k15", {}),
              ("k15", {"level": "token"}), ("k25", {})]


@pytest.mark.parametrize("name,opts", ALL_LOSSES)
@pytest.mark.parametrize("agg", AGGREGATIONS)
def test_all_tokens_masked_gives_zero_loss_and_grad(name, opts, agg):
    b = batch([[-1.0, -2.0]], [[-1.5, -1.0]], [[1.0, 1.0]], [[0.0, 0.0]])
    loss, _ = policy_loss(b, name, opts, agg=agg, max_len=4)
    g = grad_of(loss, b)
    assert float(loss.detach()) == 0.0 and torch.isfinite(g).all() and g.abs().sum() == 0


@pytest.mark.parametrize("name,opts", ALL_LOSSES)
def test_on_policy_single_token_gradient_is_minus_advantage(name, opts):
    # A single-token response with pi = pi_old: every loss here reduces to plain REINFORCE, d loss/d logp = -A
    # (ppo/gspo: d(-rA)/dlogp = -rA = -A at r = 1; cispo: -w A with w = 1; k15/k25: squared term is 0).
    b = batch([[-0.7]], [[-0.7]], [[0.4]])
    loss, _ = policy_loss(b, name, opts, agg="token-mean")
    close(grad_of(loss, b), [[-0.4]])


def test_equal_reward_group_contributes_no_gradient():
    # A group with equal rewards has A = 0 for every estimator, so no loss gives it a gradient.
    for name, opts in ALL_LOSSES:
        b = batch([[-1.0, -2.0]], [[-1.0, -2.0]], [[0.0, 0.0]])
        loss, _ = policy_loss(b, name, opts, agg="seq-mean-token-sum")
        assert grad_of(loss, b).abs().sum() == 0, name


@pytest.mark.parametrize("name", ["ppo_clip", "cispo", "gspo"])
def test_far_off_policy_token_cannot_overflow(name):
    """A log-ratio of 200 (a stale or mismatched sample) would give exp() = inf and NaN gradients; the
    losses clamp log(pi / pi_old) to [-20, 20] as verl does, so loss and gradient stay finite."""
    logp = torch.tensor([[0.0, -1.0]], requires_grad=True)
    b = LossBatch(logprobs=logp, old_logprobs=torch.tensor([[-200.0, -1.0]]), advantages=torch.tensor([[-1.0, 1.0]]),
                  mask=torch.ones(1, 2))
    loss, _ = policy_loss(b, name)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logp.grad).all()
