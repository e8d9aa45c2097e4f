"""SFT warm-up with TRL's SFTTrainer: teach the output format (steps, then ``\\boxed{}``) before RL.

Prompt/completion pairs, loss on the completion only, EOS appended, so the policy learns to stop.
"""

from __future__ import annotations

import logging
from pathlib import Path

import datasets
from trl import SFTConfig as TRLSFTConfig
from trl import SFTTrainer

from longcot.policies.optimizers import build_optimizer, optimizer_metrics

log = logging.getLogger(__name__)


def run_sft(model, tokenizer, pairs: list[tuple[str, str]], out_dir: str | Path, *, lr: float, epochs: float,
            batch_size: int, warmup_ratio: float = 0.05, weight_decay: float = 0.0, seed: int = 0,
            max_length: int = 1024, gradient_checkpointing: bool = False, device: str = "cpu",
            precision: str = "fp32", optimizer: str = "adamw", optimizer_options: dict | None = None) -> dict:
    """Fine-tune ``model`` in place on (prompt, completion) pairs and save it to ``out_dir``.

    ``device`` ("cpu" or "cuda") and ``precision`` ("fp32" or "bf16-mixed") are the RL trainer's
    (``trainer.device``/``trainer.precision`` resolved, longcot.rl.strategy): float32 master weights, bf16
    compute under bf16-mixed (TRL's ``bf16=True``, autocast). Returns TRL's training metrics (final loss,
    runtime). The model object is updated in place, so the caller can continue with RL without reloading; its
    gradient-checkpointing state is restored afterwards (TRL leaves it switched on, and an RL trainer
    continuing on the object would silently recompute every forward in backward).
    """
    if device not in ("cpu", "cuda") or precision not in ("fp32", "bf16-mixed"):
        raise ValueError(f"run_sft: device must be cpu|cuda and precision fp32|bf16-mixed, got {device}, {precision}")
    model.float()  # master weights in float32, as in RL
    was_checkpointing = bool(getattr(model, "is_gradient_checkpointing", False))
    out_dir = Path(out_dir)
    ds = datasets.Dataset.from_dict({"prompt": [p for p, _ in pairs], "completion": [c for _, c in pairs]})
    args = TRLSFTConfig(
        output_dir=str(out_dir / "trl"), learning_rate=lr, num_train_epochs=epochs,
        per_device_train_batch_size=batch_size, warmup_steps=warmup_ratio, weight_decay=weight_decay,
        lr_scheduler_type="cosine", logging_steps=25, save_strategy="no", report_to=[], seed=seed,
        max_length=max_length, completion_only_loss=True, use_cpu=device == "cpu", dataloader_num_workers=0,
        disable_tqdm=False, bf16=precision == "bf16-mixed", fp16=False, gradient_checkpointing=gradient_checkpointing,
        # transformers 5.19's Qwen3-MoE load-balancing loss breaks on padded batches (shape mismatch between
        # routing weights and the attention mask): the warm-up runs without the auxiliary loss.
        router_aux_loss_coef=0.0,
    )
    # adamw: TRL's own (same AdamW); muon/muonclip: ours (policies/optimizers.py), TRL's schedule on top
    opt = None if optimizer == "adamw" and not optimizer_options else build_optimizer(
        model, optimizer, lr=lr, betas=(args.adam_beta1, args.adam_beta2), weight_decay=weight_decay,
        options=optimizer_options, where="sft.optimizer")
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tokenizer,
                         optimizers=(opt, None))
    result = trainer.train()
    if model.is_gradient_checkpointing and not was_checkpointing:
        model.gradient_checkpointing_disable()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    metrics = dict(result.metrics)
    metrics["final_loss"] = next((h["loss"] for h in reversed(trainer.state.log_history) if "loss" in h), None)
    if opt is not None:
        metrics.update(optimizer_metrics(opt))  # MuonClip: the last step's max attention logit
        qk = getattr(opt, "qk_clip", None)
        if qk is not None:
            qk.remove()  # its hooks must not outlive SFT (RL builds its own optimizer)
    return metrics
