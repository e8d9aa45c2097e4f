"""Rollout engine numbers on the tiny MoE: start time, generation throughput, weight-sync time and accuracy.

    OMP_NUM_THREADS=1 python benchmarks/rollout_engines.py [--prompts 16] [--tokens 128] [--repeats 3]

Generation: ``--prompts`` prompts x 1 sample x up to ``--tokens`` tokens at temperature 1 and 0, median of
``--repeats`` runs; tokens/s counts the tokens actually returned (at temperature 1 EOS ends some samples
early, and HF still pays for the padded steps of finished rows).
Sync: median time of ``sync_weights`` after perturbing every parameter, and the max |logprob| difference
between vLLM and the HF model on fixed sequences, with and without the fused-MoE repack workaround.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from longcot.policies.build import build_tiny_moe
from longcot.rollout import build_engine
from longcot.rollout.base import Prompt, SamplingConfig


def throughput(engine, prompts: list[Prompt], tokens: int, repeats: int, temperature: float) -> tuple[float, int]:
    """Median tokens/s over ``repeats`` calls, and tokens generated per call."""
    rates, count = [], 0
    for r in range(repeats):
        t0 = time.perf_counter()
        trajs = engine.generate(prompts, SamplingConfig(n=1, max_tokens=tokens, seed=r, temperature=temperature))
        count = sum(len(t.response_ids) for t in trajs)
        rates.append(count / (time.perf_counter() - t0))
    return statistics.median(rates), count


def sync_accuracy(engine, model_dir: str, repeats: int) -> dict:
    """Sync times and vLLM-vs-HF logprob differences with the repack workaround off, then on."""
    trainer = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    prompt, response = [1] + list(range(40, 60)), list(range(10, 70))
    ids = torch.tensor([prompt + response])

    def diff() -> float:
        with torch.no_grad():
            lp = trainer(input_ids=ids).logits[0, len(prompt) - 1 : -1].log_softmax(-1)
        ref = lp.gather(-1, torch.tensor(response)[:, None])[:, 0]
        (got,) = engine.compute_logprobs([prompt], [response])
        return (torch.tensor(got) - ref).abs().max().item()

    out, times = {}, []
    for version, fix in enumerate([False] + [True] * repeats, start=1):
        with torch.no_grad():
            for p in trainer.parameters():
                p.add_(torch.randn_like(p) * 0.02)
        engine.repack_moe_after_sync = fix
        engine.sync_weights(trainer.named_parameters(), version)
        times.append(engine.last_sync_s) if fix else None
        out["max_diff_with_fix" if fix else "max_diff_without_fix"] = diff()
    out["sync_s_median"] = statistics.median(times)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    model_dir = str(build_tiny_moe(tempfile.mkdtemp(prefix="tiny_moe_")))
    tok = AutoTokenizer.from_pretrained(model_dir)
    prompts = [Prompt(f"p{i}", [tok.bos_token_id] + tok.encode(f"{i}+{i * 7}=", add_special_tokens=False))
               for i in range(args.prompts)]
    result: dict = {"threads": torch.get_num_threads()}
    t0 = time.perf_counter()
    vllm_engine = build_engine("vllm", model_dir, tok, max_model_len=512)
    result["vllm_start_s_incl_import"] = round(time.perf_counter() - t0, 2)
    result["vllm_start_s"] = round(vllm_engine.start_s, 2)
    for temp in (1.0, 0.0):  # greedy never meets EOS on the random model: every sample runs to --tokens
        result[f"vllm_T{temp:g}_tok_s"], result[f"vllm_T{temp:g}_tokens"] = throughput(
            vllm_engine, prompts, args.tokens, args.repeats, temp)
    result.update(sync_accuracy(vllm_engine, model_dir, args.repeats))
    vllm_engine.shutdown()
    hf = build_engine("hf", model_dir, tok, batch_size=args.prompts)
    for temp in (1.0, 0.0):
        result[f"hf_T{temp:g}_tok_s"], result[f"hf_T{temp:g}_tokens"] = throughput(
            hf, prompts, args.tokens, args.repeats, temp)
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
