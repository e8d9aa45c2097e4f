"""DPO long2short (k1.5): the shortest correct sample is preferred over longer ones, with TRL's DPOTrainer.

Pairs from the n graded samples of each problem (:func:`build_pairs`, the rule documented in docs/long2short.md):

* chosen: the shortest correct sample (as in shortest rejection sampling);
* rejected candidates: correct samples at least ``long_ratio`` times as long as the chosen one (k1.5: 1.5),
  and wrong samples: those longer than the chosen one (``wrong="longer"``, k1.5), all of them (``"any"``),
  or none (``"none"``);
* cut-off samples (finish != "stop") are never used: they have no end, and TRL appends EOS to every completion,
  which would make a text the model did not write;
* a text is a candidate once (n samples of a short problem repeat the same few texts; a repeat would only
  weigh that pair more);
* up to ``pairs_per_problem`` pairs per problem, longest candidates first (ties: lowest sample index), one
  chosen against each; problems without a correct sample or without a candidate give no pair.

Training is TRL's ``DPOTrainer`` with the long model as its own frozen reference (TRL copies it).
"""

from __future__ import annotations

import logging
from pathlib import Path

from longcot.long2short.rejection import by_problem

log = logging.getLogger(__name__)


def rejected_candidates(samples: list[dict], chosen: dict, *, long_ratio: float, wrong: str) -> list[dict]:
    """The samples of one problem that may be rejected against ``chosen``, longest first."""
    if wrong not in ("longer", "any", "none"):
        raise ValueError(f"dpo wrong must be 'longer', 'any' or 'none', got {wrong!r}")
    out = []
    for r in samples:
        if r is chosen or r["finish"] != "stop" or r["response"] == chosen["response"]:
            continue
        if r["correct"]:
            if r["tokens"] >= long_ratio * chosen["tokens"]:
                out.append(r)
        elif wrong == "any" or (wrong == "longer" and r["tokens"] > chosen["tokens"]):
            out.append(r)
    unique: dict[str, dict] = {}  # first (longest, lowest index) sample of each text, in that order
    for r in sorted(out, key=lambda r: (-r["tokens"], r["sample"])):
        unique.setdefault(r["response"], r)
    return list(unique.values())


def build_pairs(records: list[dict], *, long_ratio: float = 1.5, wrong: str = "longer",
                pairs_per_problem: int = 1) -> list[dict]:
    """``{"prompt", "chosen", "rejected", "id", "chosen_tokens", "rejected_tokens", "rejected_correct"}`` rows."""
    pairs = []
    for pid, samples in by_problem(records).items():
        correct = [r for r in samples if r["correct"] and r["finish"] == "stop"]
        if not correct:
            continue
        chosen = min(correct, key=lambda r: (r["tokens"], r["sample"]))
        for rej in rejected_candidates(samples, chosen, long_ratio=long_ratio, wrong=wrong)[:pairs_per_problem]:
            pairs.append({"prompt": chosen["prompt"], "chosen": chosen["response"], "rejected": rej["response"],
                          "id": pid, "chosen_tokens": chosen["tokens"], "rejected_tokens": rej["tokens"],
                          "rejected_correct": rej["correct"]})
    return pairs


def pair_stats(pairs: list[dict]) -> dict:
    n = max(len(pairs), 1)
    return {"pairs": len(pairs), "problems": len({p["id"] for p in pairs}),
            "rejected_correct_frac": sum(p["rejected_correct"] for p in pairs) / n,
            "chosen_tokens_mean": sum(p["chosen_tokens"] for p in pairs) / n,
            "rejected_tokens_mean": sum(p["rejected_tokens"] for p in pairs) / n}


def run_dpo(model, tokenizer, pairs: list[dict], out_dir: str | Path, *, beta: float, loss_type: list[str],
            lr: float, epochs: float, batch_size: int, loss_weights: list[float] | None = None,
            warmup_ratio: float = 0.05, weight_decay: float = 0.0, seed: int = 0, max_length: int = 1024,
            max_steps: int = -1) -> dict:
    """Train ``model`` in place with TRL's DPOTrainer on ``pairs`` and save it (HF format) to ``out_dir``.

    Returns TRL's training metrics plus the last logged reward accuracy and margin (how often, and by how much,
    the implicit reward ranks the chosen response above the rejected one at the end of training).
    """
    import datasets
    from trl import DPOConfig, DPOTrainer

    if not pairs:
        raise ValueError("DPO: no preference pairs (no problem had a correct sample and a rejected candidate)")
    out_dir = Path(out_dir)
    ds = datasets.Dataset.from_dict({k: [p[k] for p in pairs] for k in ("prompt", "chosen", "rejected")})
    args = DPOConfig(
        output_dir=str(out_dir / "trl"), learning_rate=lr, num_train_epochs=epochs, max_steps=max_steps,
        per_device_train_batch_size=batch_size, warmup_steps=warmup_ratio, weight_decay=weight_decay,
        lr_scheduler_type="cosine", logging_steps=10, save_strategy="no", report_to=[], seed=seed,
        beta=beta, loss_type=list(loss_type), loss_weights=loss_weights, max_length=max_length, use_cpu=True,
        dataloader_num_workers=0, bf16=False, fp16=False, gradient_checkpointing=False,
        # as in the SFT warm-up (longcot.rl.sft): transformers' Qwen3-MoE load-balancing loss breaks on padded
        # batches, so DPO runs without the auxiliary loss
        router_aux_loss_coef=0.0,
    )
    trainer = DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tokenizer)
    result = trainer.train()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    metrics = dict(result.metrics)
    logged = [h for h in trainer.state.log_history if "loss" in h]
    if logged:
        last = logged[-1]
        metrics.update({k: last[k] for k in last if k.startswith(("rewards/", "loss"))})
    return metrics
