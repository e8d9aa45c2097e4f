"""long2short end to end on a real tiny checkpoint (a tiny MoE after a short SFT): TRL's DPOTrainer on pairs built
by the documented rule, and the `longcot long2short` command for each method at toy size (vLLM on CPU)."""

import json
import random
from pathlib import Path

import pytest
import torch

from longcot.cli import main as cli_main
from longcot.data.arith import ArithSpec, make_problem
from longcot.jsonl import read_jsonl
from longcot.long2short.dpo import build_pairs, run_dpo
from longcot.long2short.rejection import shortest_correct
from longcot.long2short.short_model import without_rechecks
from longcot.policies.build import build_tiny_moe
from longcot.policies.load import load_policy, load_tokenizer
from longcot.rl.sft import run_sft

ROOT = Path(__file__).resolve().parents[2]
# toy sizes for every command run: few problems, short budgets
TOY = ["data.num_train=300", "data.num_heldout=8", "eval.num_problems=8", "eval.n=2", "eval.max_tokens=64",
       "threads=1"]


def arith_rows(n, seed=0, recheck_prob=1.0):
    rng = random.Random(seed)
    return [make_problem(rng, ArithSpec(1, 2, 9, recheck_prob=recheck_prob, ops="+-")) for _ in range(n)]


@pytest.fixture(scope="module")
def long_ckpt(tmp_path_factory):
    """A 2-layer tiny MoE fine-tuned for 64 steps on re-check traces (~15 s): a real checkpoint that writes steps,
    re-checks and boxed answers (mostly wrong ones) and stops."""
    root = tmp_path_factory.mktemp("l2s")
    path = build_tiny_moe(root / "init", seed=0, num_hidden_layers=2)
    model, tok = load_policy(path), load_tokenizer(path)
    pairs = [(f"Q: {r['problem']}\n", r["solution"]) for r in arith_rows(1024, recheck_prob=0.5)]
    run_sft(model, tok, pairs, root / "long", lr=5e-3, epochs=1, batch_size=16)
    return root / "long"


def sequence_logp(model, tok, prompt: str, completion: str) -> float:
    p = tok(prompt, add_special_tokens=False).input_ids
    c = tok(completion, add_special_tokens=False).input_ids + [tok.eos_token_id]
    ids = torch.tensor([p + c])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
    return float(logp[torch.arange(len(p) - 1, ids.shape[1] - 1), ids[0, len(p):]].sum())


@pytest.mark.slow
def test_trl_dpo_trains_on_the_pairs_and_prefers_the_short_answers(long_ckpt, tmp_path):
    records = []
    for i, r in enumerate(arith_rows(24, seed=1)):
        prompt, short = f"Q: {r['problem']}\n", without_rechecks(r["solution"])
        wrong = r["solution"].replace(f"\\boxed{{{r['answer']}}}", f"\\boxed{{{int(r['answer']) + 1}}}")
        for j, (text, ok) in enumerate([(r["solution"], True), (short, True), (wrong, False)]):
            records.append({"id": f"p{i}", "sample": j, "prompt": prompt, "response": text, "tokens": len(text) + 1,
                            "correct": ok, "finish": "stop"})
    pairs = build_pairs(records, pairs_per_problem=2)
    assert len(pairs) == 48 and all(p["chosen"] == without_rechecks(p["chosen"]) for p in pairs)
    model, tok = load_policy(long_ckpt), load_tokenizer(long_ckpt)
    ref = load_policy(long_ckpt)
    margin = lambda m: sum(sequence_logp(m, tok, p["prompt"], p["chosen"]) -
                           sequence_logp(m, tok, p["prompt"], p["rejected"]) for p in pairs) / len(pairs)
    before = margin(model)
    metrics = run_dpo(model, tok, pairs, tmp_path / "dpo", beta=0.1, loss_type=["sigmoid"], lr=5e-4, epochs=1,
                      batch_size=8, max_steps=4)
    assert metrics["train_loss"] > 0 and "rewards/margins" in metrics
    assert margin(model) > before + 1.0  # the short answers gained log-probability against the rejected ones
    assert margin(ref) == pytest.approx(before)  # the reference (a copy TRL made) was not trained
    assert torch.equal(next(load_policy(tmp_path / "dpo").parameters()), next(model.parameters()))


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


@pytest.mark.slow
def test_long2short_rl_few_steps_applies_the_length_reward_from_step_0(long_ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("LONGCOT_NO_PROGRESS", "1")
    rc = cli_main(["long2short", str(ROOT / "recipes/tiny/long2short-rl.yaml"), f"out_dir={tmp_path}", "name=rl",
                   f"long2short.long_model={long_ckpt}", "rl.steps=2", "rl.prompts_per_step=4", "rollout.n=4",
                   "rollout.max_tokens=32", *TOY])
    assert rc == 0
    run = tmp_path / "rl"
    rows = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1]
    for r in rows:  # weight 0.5 on the length reward from the first step (no warm-up)
        assert r["reward_mean"] == pytest.approx(r["rewards/math"] + 0.5 * r["rewards/k15_length"], abs=1e-9)
        assert r["response_len_max"] <= 32  # the reduced rollout budget
    assert any(r["rewards/k15_length"] != 0 for r in rows)
    s = summary(run)
    block = s["long2short"]
    assert block["method"] == "rl" and block["long_model"] == str(long_ckpt)
    assert block["long"]["accuracy"] == s["eval"]["initial"]["accuracy"]  # the start is the long model (SFT off)
    assert load_policy(block["result_model"]).config.num_experts == 8
    again = ["long2short", str(ROOT / "recipes/tiny/long2short-rl.yaml"), f"out_dir={tmp_path}", "name=rl",
             f"long2short.long_model={long_ckpt}", "rl.steps=2"]
    assert cli_main(again) == 2  # an existing training run is never wiped without --resume / --overwrite
    config = (run / "config.yaml").read_text()
    assert f"path: {long_ckpt}" in config and "enabled: false" in config  # no SFT stage


@pytest.mark.slow
def test_command_runs_rejection_sampling_dpo_and_merge(long_ckpt, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LONGCOT_NO_PROGRESS", "1")
    # "correct" = has a boxed answer (the format reward): the toy model rarely gets the arithmetic right, and
    # long2short.correctness may name any reward component
    common = [f"out_dir={tmp_path}", f"long2short.long_model={long_ckpt}", "long2short.correctness=format",
              "rewards=[{name: math}, {name: format}]", "long2short.samples.num_problems=12",
              "long2short.samples.n=4", "long2short.samples.chunk_problems=5", *TOY]
    assert cli_main(["long2short", str(ROOT / "recipes/tiny/long2short-srs.yaml"), "name=srs",
                     "long2short.sft.epochs=1", *common]) == 0
    srs = tmp_path / "srs"
    samples = read_jsonl(srs / "samples.jsonl")
    assert len(samples) == 48 and len({r["id"] for r in samples}) == 12
    assert all(r["correct"] == (r["rewards"]["format"] > 0.5) for r in samples)
    kept = shortest_correct(samples)
    block = summary(srs)["long2short"]
    assert block["rejection"]["kept"] == len(kept) > 0
    assert block["rejection"]["kept_tokens_mean"] == sum(r["tokens"] for r in kept) / len(kept)
    assert set(block) >= {"long", "result", "correct_len_change", "accuracy_change"}

    assert cli_main(["long2short", str(ROOT / "recipes/tiny/long2short-dpo.yaml"), "name=dpo",
                     f"long2short.samples.reuse={srs / 'samples.jsonl'}", *common]) == 0
    dpo = tmp_path / "dpo"
    assert read_jsonl(dpo / "samples.jsonl") == samples  # the very samples of the rejection-sampling run
    assert read_jsonl(dpo / "pairs.jsonl") == build_pairs(samples, pairs_per_problem=2)
    assert summary(dpo)["long2short"]["pairs"]["pairs"] > 0

    assert cli_main(["long2short", str(ROOT / "recipes/tiny/long2short-merge.yaml"), "name=merge",
                     "long2short.merge.short_examples=64", *common]) == 0
    block = summary(tmp_path / "merge")["long2short"]
    assert block["short_model"] == str(tmp_path / "merge" / "checkpoints" / "short")
    assert set(block) >= {"long", "short", "result"}

    capsys.readouterr()
    png = tmp_path / "efficiency.png"
    assert cli_main(["long2short", "report", str(srs), str(dpo), str(tmp_path / "merge"), "--out", str(png)]) == 0
    table = capsys.readouterr().out
    assert "| long model | long |" in table and "| short model | short |" in table and "| dpo | dpo |" in table
    assert png.stat().st_size > 5000


def test_bad_recipes_fail_before_any_work(tmp_path, capsys):
    rl = str(ROOT / "recipes/tiny/long2short-rl.yaml")
    missing = f"long2short.long_model={tmp_path}/nothing"
    assert cli_main(["long2short", rl, missing]) == 2
    assert "no Hugging Face checkpoint" in capsys.readouterr().err
    build_tiny_moe(tmp_path / "m", seed=0)
    ok = f"long2short.long_model={tmp_path}/m"
    assert cli_main(["long2short", rl, ok, "rl.length_penalty_warmup=10"]) == 2
    assert "length_penalty_warmup must be 0" in capsys.readouterr().err
    assert cli_main(["long2short", rl, ok, "rollout.max_tokens=128"]) == 2
    assert "must be below eval.max_tokens" in capsys.readouterr().err
    assert cli_main(["long2short", rl, ok, "rewards=[{name: math}]"]) == 2
    assert "length reward 'k15_length'" in capsys.readouterr().err
    assert cli_main(["long2short", rl, ok, "long2short.method=distill"]) == 2
    assert "expected one of" in capsys.readouterr().err


@pytest.mark.slow
def test_a_crashed_sample_draw_resumes_to_the_same_samples(long_ckpt, tmp_path, monkeypatch):
    """The long model's samples are graded and saved problem by problem: a crash while grading the 6th of 12 keeps
    5, and the rerun into the same run directory draws only the other 7; samples.jsonl then equals an uninterrupted
    draw's (vLLM seeds each problem by its id). Another recipe over the partial file is refused."""
    from longcot.config import load_recipe
    from longcot.errors import InputError
    from longcot.eval.resumable import PARTIAL
    from longcot.long2short import samples as samples_mod
    from longcot.long2short.run import Session
    from longcot.run import RunDir

    monkeypatch.setenv("LONGCOT_NO_PROGRESS", "1")
    args = [f"out_dir={tmp_path}", f"long2short.long_model={long_ckpt}", "long2short.correctness=format",
            "rewards=[{name: math}, {name: format}]", "long2short.samples.num_problems=12", "long2short.samples.n=4",
            *TOY]

    def draw(name: str, *extra: str) -> list[dict]:
        recipe = load_recipe(str(ROOT / "recipes/tiny/long2short-srs.yaml"), [*args, f"name={name}", *extra])
        session = Session(recipe, RunDir(tmp_path / name))
        try:
            return session.samples()
        finally:
            session.close()

    whole = draw("whole")
    grade, calls = samples_mod.compute_rewards, []

    def crash_at_the_sixth(trajs, specs, **kwargs):
        calls.append(1)
        if len(calls) == 6:
            raise RuntimeError("killed")
        return grade(trajs, specs, **kwargs)

    monkeypatch.setattr(samples_mod, "compute_rewards", crash_at_the_sixth)
    with pytest.raises(RuntimeError, match="killed"):
        draw("crashed")
    partial = tmp_path / "crashed" / PARTIAL
    assert len(partial.read_text().splitlines()) == 1 + 5 and not (tmp_path / "crashed" / "samples.jsonl").exists()
    with pytest.raises(InputError, match=r"n: 4 there, 8 now.*another name="):
        draw("crashed", "long2short.samples.n=8")
    resumed = draw("crashed")
    assert resumed == whole and read_jsonl(tmp_path / "crashed" / "samples.jsonl") == whole
    assert len(calls) == 6 + 7 and not partial.exists()  # 7 problems graded on the rerun, the file removed


@pytest.mark.slow
def test_long2short_rl_stopped_by_sigterm_says_how_to_resume(long_ckpt, tmp_path):
    """SIGTERM during long2short RL saves a training state like `longcot train` does; the command used to end in a
    traceback (exit 1) because it did not catch the stop, and printed no --resume command."""
    import os
    import subprocess
    import sys

    args = ["long2short", str(ROOT / "recipes/tiny/long2short-rl.yaml"), f"out_dir={tmp_path}", "name=rl",
            f"long2short.long_model={long_ckpt}", "rl.steps=3", "rl.prompts_per_step=4", "rollout.n=4",
            "rollout.max_tokens=32", *TOY]
    env = {**os.environ, "LONGCOT_NO_PROGRESS": "1"}
    faults = ROOT / "tests/run/faults.py"  # generate call 1 is the long model's eval, call 3 is RL step 1
    out = subprocess.run([sys.executable, str(faults), "longcot.rollout.vllm:VLLMEngine.generate", "3", "TERM",
                          "before", "--", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 143, out.stderr[-3000:]
    last = out.stderr.splitlines()[-1]
    assert last.startswith("continue with: longcot long2short") and last.endswith(" threads=1 --resume"), last
    assert "Traceback" not in out.stderr, out.stderr[-5000:]
    assert [r["step"] for r in read_jsonl(tmp_path / "rl/metrics.jsonl")] == [0, 1]
    assert cli_main([*args, "--resume"]) == 0
    assert [r["step"] for r in read_jsonl(tmp_path / "rl/metrics.jsonl")] == [0, 1, 2]


@pytest.mark.slow
def test_the_draws_reward_error_rate_is_over_the_draw_not_one_problem(long_ckpt, tmp_path, monkeypatch):
    """Problems are graded one by one as they finish, but max_error_rate (0.1) is a rate over many samples: two
    failures on the first problem's 4 samples (50% of that problem, 4% of the draw) must not stop a 12-problem draw;
    a reward that always fails stops it once a chunk's worth is graded."""
    from longcot.config import load_recipe
    from longcot.long2short.run import Session
    from longcot.rewards.errors import RewardError
    from longcot.run import RunDir

    module = tmp_path / "flaky_rewards.py"
    module.write_text("calls = []\n\ndef first_two_fail(sample):\n    calls.append(1)\n    if len(calls) <= 2:\n"
                      "        raise ValueError('flaky')\n    return 0.0\n\ndef always_fails(sample):\n"
                      "    raise ValueError('broken')\n")
    monkeypatch.setenv("LONGCOT_NO_PROGRESS", "1")

    def draw(name: str, fn: str) -> list[dict]:
        recipe = load_recipe(str(ROOT / "recipes/tiny/long2short-srs.yaml"), [
            f"out_dir={tmp_path}", f"name={name}", f"long2short.long_model={long_ckpt}",
            "long2short.correctness=format", f"rewards=[{{name: format}}, {{name: '{module}:{fn}'}}]",
            "long2short.samples.num_problems=12",
            "long2short.samples.n=4", "long2short.samples.chunk_problems=5", *TOY])
        session = Session(recipe, RunDir(tmp_path / name))
        try:
            return session.samples()
        finally:
            session.close()

    assert len(draw("flaky", "first_two_fail")) == 48
    with pytest.raises(RewardError, match="failed on 20 of 20 samples"):
        draw("broken", "always_fails")
