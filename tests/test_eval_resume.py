"""`longcot eval` keeps its work through a crash: problems are saved as the engine finishes them, and a rerun into
the same directory generates only the rest (vLLM: the very samples an uninterrupted run grades, its seeds being
per problem; HF: the problems read back are kept as they were)."""

import json

import pytest

from longcot.errors import InputError
from longcot.eval.config import load_eval_config
from longcot.eval.dataset import build_prompts
from longcot.eval.evaluate import evaluate
from longcot.eval.resumable import PARTIAL, ResumableGeneration
from longcot.eval.run import grader_for, protocol_info, sampling_config
from longcot.policies.build import build_tiny_moe
from longcot.policies.load import load_tokenizer
from longcot.rollout.vllm import VLLMEngine  # imports vLLM only when built

PROBLEMS = [{"id": f"q{i}", "problem": f"What is {i}+{i}?", "answer": str(2 * i)} for i in range(7)]


class Crash(Exception):
    pass


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_moe(tmp_path_factory.mktemp("eval_resume") / "model")


@pytest.fixture(scope="module", params=["vllm", "hf"])
def engine(request, model):
    if request.param == "vllm":
        pytest.importorskip("vllm")
        eng = VLLMEngine(str(model), max_model_len=128)
        yield eng
        eng.shutdown()
    else:
        from longcot.rollout.hf import HFEngine

        yield HFEngine(str(model), load_tokenizer(str(model)), max_model_len=128)


def run(engine, model, out, crash_after: int | None = None, **overrides):
    """One `longcot eval` of the problems into ``out`` on a shared engine; ``crash_after``: raise once that many
    problems are saved (what a crash, an OOM kill or Ctrl-C does to the process)."""
    cfg = load_eval_config(None, [f"model={model}", "template=raw", 'prompt="Q: {problem}\\nA:"', "n=3",
                                  "max_tokens=24", "temperature=1.0", "k=[1,3]", f"out={out}",
                                  *[f"{k}={v}" for k, v in overrides.items()]])
    tok = load_tokenizer(str(model))
    prompts = build_prompts(PROBLEMS, tok, "raw", cfg.prompt)
    info = protocol_info(cfg, engine=type(engine).__name__)
    generate = ResumableGeneration(engine, tok, out, info, progress=False)
    if crash_after is not None:
        append, saved = generate._append, []

        def crashing(f, record):
            append(f, record)
            saved.append(record)
            if len(saved) == crash_after + 1:  # the protocol line, then one per problem
                raise Crash
        generate._append = crashing
    summary = evaluate(engine, tok, prompts, sampling_config(cfg), grader_for(cfg), out, ks=cfg.k, info=info,
                       generate=generate)
    generate.finish()
    return summary


def samples(out):
    return [(r["id"], r["sample"], r["response"], r["tokens"]) for r in map(json.loads, (out / "samples.jsonl").open())]


def test_a_crashed_eval_resumes_to_the_same_samples(engine, model, tmp_path):
    whole = run(engine, model, tmp_path / "whole")
    with pytest.raises(Crash):
        run(engine, model, tmp_path / "crashed", crash_after=3)
    partial = (tmp_path / "crashed" / PARTIAL).read_text().splitlines()
    assert len(partial) == 4 and not (tmp_path / "crashed" / "samples.jsonl").exists()
    # a write cut short by the crash: the rerun keeps the whole records before it
    with open(tmp_path / "crashed" / PARTIAL, "a") as f:
        f.write('{"id": "q6", "samp')
    before = {r["id"]: r["samples"] for r in map(json.loads, partial[1:])}
    resumed = run(engine, model, tmp_path / "crashed")
    got = samples(tmp_path / "crashed")
    assert [(i, k) for i, k, _, _ in got] == [(i, k) for i, k, _, _ in samples(tmp_path / "whole")]
    assert {i: [(r["response"], r["tokens"]) for r in rows] for i, rows in before.items()} == \
        {i: [(text, n) for j, _, text, n in got if j == i] for i in before}  # read back, not generated again
    if isinstance(engine, VLLMEngine):  # per-problem seeds: the very samples of the uninterrupted run
        assert got == samples(tmp_path / "whole")
        assert resumed["metrics"]["avg@3"] == whole["metrics"]["avg@3"]
    assert resumed["metrics"]["resumed_problems"] == 3 and "resumed_problems" not in whole["metrics"]
    assert not (tmp_path / "crashed" / PARTIAL).exists()  # done: nothing left to resume


def test_another_protocol_is_refused_naming_what_differs(engine, model, tmp_path):
    with pytest.raises(Crash):
        run(engine, model, tmp_path / "out", crash_after=2)
    with pytest.raises(InputError, match=r"n: 3 there, 4 now.*another --out"):
        run(engine, model, tmp_path / "out", n=4)
    # k only changes the grading of the same samples: it resumes
    assert run(engine, model, tmp_path / "out", k="[1,2]")["metrics"]["resumed_problems"] == 2
