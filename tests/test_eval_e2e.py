"""`longcot eval` end to end on a tiny MoE built in a tmp dir: real engines, real grader, all outputs."""

import json

import pytest

from longcot.eval.config import load_eval_config
from longcot.policies.build import build_tiny_moe

PROBLEMS = [
    {"id": "a", "problem": "What is 2+3?", "answer": "5"},
    {"id": "b", "problem": "What is 7*6?", "answer": "42"},
    {"id": "c", "problem": "Compute 10-4.", "answer": "6"},
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_e2e")
    data = root / "problems.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    return build_tiny_moe(root / "model"), data


def _check_outputs(out, n, max_tokens):
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == len(PROBLEMS) * n
    assert sorted((s["id"], s["sample"]) for s in samples) == sorted(
        (p["id"], i) for p in PROBLEMS for i in range(n))
    for s in samples:
        assert set(s) == {"id", "sample", "response", "extracted", "correct", "tokens", "finish"}
        assert 1 <= s["tokens"] <= max_tokens and s["finish"] in ("stop", "length")
        assert (s["finish"] == "length") == (s["tokens"] == max_tokens)
    summary = json.loads((out / "summary.json").read_text())
    m = summary["metrics"]
    assert summary["n"] == n and len(summary["per_problem"]) == len(PROBLEMS)
    assert {f"avg@{n}", "pass@1", f"pass@{n}", "maj@1", f"maj@{n}", "tokens_per_s"} <= set(m)
    assert m["requests"] == len(PROBLEMS) * n and m["tokens_per_s"] > 0
    assert m["gen_tokens"] == sum(s["tokens"] for s in samples)
    assert m[f"avg@{n}"] == pytest.approx(sum(s["correct"] for s in samples) / len(samples))
    assert m["truncation_rate"] == pytest.approx(sum(s["finish"] == "length" for s in samples) / len(samples))
    assert "| pass@1 |" in (out / "report.md").read_text()
    assert (out / "pass_rate_vs_length.png").stat().st_size > 1000
    return samples


def test_eval_cli_vllm_end_to_end(tiny, tmp_path, monkeypatch):
    pytest.importorskip("vllm")
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    from longcot.eval.cli import main

    model, data = tiny
    out = tmp_path / "out"
    argv = ["--model", str(model), "--dataset", str(data), "--template", "raw", "--prompt", "Q: {problem}\nA:",
            "--n", "4", "--max-tokens", "16", "--k", "1,2,4", "--out", str(out), "--engine", "vllm"]
    assert main(argv) == 0
    samples = _check_outputs(out, 4, 16)
    assert len({s["response"] for s in samples}) > 1  # T=0.6 sampling, distinct per-sample seeds
    summary = json.loads((out / "summary.json").read_text())
    cfg = summary["config"]
    assert cfg["engine"] == "vllm" and cfg["temperature"] == 0.6 and cfg["top_p"] == 0.95
    # Re-scoring the written samples without a model reproduces every quality metric.
    assert main(["--responses", str(out / "samples.jsonl"), "--dataset", str(data), "--k", "1,2,4",
                 "--out", str(tmp_path / "rescored")]) == 0
    again = json.loads((tmp_path / "rescored" / "summary.json").read_text())
    for key, value in again["metrics"].items():
        if key not in ("missing_problems", "skipped_responses"):  # re-score only
            assert summary["metrics"][key] == value, key
    assert again["per_problem"] == summary["per_problem"]


def test_eval_during_training_with_an_engine_in_hand(tiny, tmp_path):
    """The trainer's hook: same protocol through the engine it already holds (here the HF engine)."""
    from longcot.eval.run import eval_during_training
    from longcot.policies.load import load_tokenizer
    from longcot.rollout import build_engine

    model, data = tiny
    tok = load_tokenizer(model)
    engine = build_engine("hf", str(model), tok, max_model_len=128)
    cfg = load_eval_config(None, [f"dataset.source={data}", "template=raw", "prompt='Q: {problem}\nA:'", "n=2",
                                  "max_tokens=8", "k=[1,2]", "every=5"])
    logged = eval_during_training(engine, tok, cfg, step=5, out_root=tmp_path / "eval")
    assert set(logged) >= {"eval/avg@2", "eval/pass@2", "eval/maj@2", "eval/tokens_per_s", "eval/length/mean"}
    assert 0.0 <= logged["eval/avg@2"] <= logged["eval/pass@2"] <= 1.0
    _check_outputs(tmp_path / "eval" / "step_000005", 2, 8)


def test_readme_example_with_the_tiny_model(tiny, tmp_path, caplog, capsys):
    """README's `longcot eval recipes/eval/aime24.yaml --model ... --dataset ...` on a tokenizer without a chat
    template: the raw template is used, with a warning, and recorded in summary.json."""
    from pathlib import Path

    from longcot.eval.cli import main

    root = Path(__file__).resolve().parents[1]
    model, _ = tiny
    out = tmp_path / "aime"
    argv = [str(root / "recipes/eval/aime24.yaml"), "--model", str(model), "--dataset",
            str(root / "tests/data/aime24_5.jsonl"), "--n", "2", "--max-tokens", "8", "--engine", "hf",
            "--out", str(out)]
    assert main(argv) == 0
    assert "tokenizer has no chat template: using template=raw" in caplog.text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["template"] == "raw" and summary["config"]["problems"] == 5
    assert main(argv[:1] + ["--model", str(tmp_path / "no-such-model")] + argv[3:]) == 2
    assert f"model path does not exist: {tmp_path / 'no-such-model'}" in capsys.readouterr().err


@pytest.mark.slow
def test_ctrl_c_keeps_the_saved_problems_and_says_how_to_continue(tiny, tmp_path):
    """Ctrl-C after two problems were saved: exit 130, one line instead of vLLM's and Python's tracebacks; the same
    command then generates only the third problem."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("vllm")
    model, data = tiny
    out = tmp_path / "out"
    args = ["eval", "--model", str(model), "--dataset", str(data), "--template", "raw", "--prompt", "Q: {problem}\nA:",
            "--n", "2", "--max-tokens", "16", "--out", str(out), "--engine", "vllm"]
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1",
           "LONGCOT_NO_PROGRESS": "1"}
    faults = Path(__file__).parent / "run" / "faults.py"  # sample_rows: once per finished problem, before its save
    stopped = subprocess.run([sys.executable, str(faults), "longcot.eval.resumable:sample_rows", "3", "INT", "after",
                              "--", *args], env=env, capture_output=True, text=True, timeout=600)
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    assert "Traceback" not in stopped.stderr
    assert stopped.stderr.splitlines()[-1].startswith("longcot eval: interrupted; the problems already generated")
    again = subprocess.run([sys.executable, "-m", "longcot.cli", *args], env=env, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "2 of 3 problems read back" in again.stderr
    assert json.loads((out / "summary.json").read_text())["metrics"]["resumed_problems"] == 2
