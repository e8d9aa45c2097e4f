"""Everything a recipe names is checked before any work: one place, called by every command.

The loader (:mod:`longcot.config.loader`) checks keys and types. This module checks what the keys *mean*:
that every reward, loss, advantage estimator, sampler, aggregation and data task exists (with a "did you mean"),
that their options are ones the function takes and values it accepts, that the files a run needs exist, and
that no combination of options silently biases training. All problems are reported at once, each naming the
file and line (or override) and the dotted key, as one :class:`~longcot.config.loader.ConfigError`.

``longcot train`` (also ``--dry-run``), ``eval`` and ``score`` call it after loading the config and before
building anything; :func:`longcot.pipeline.train` calls it too, for Python callers. ``environment=True`` adds
the checks that look at this machine (the code sandbox's start-up probe); ``--dry-run`` runs them as well,
since a run would fail there.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from longcot.config.loader import ConfigError, Source
from longcot.registry import check_options, did_you_mean

DATA_SUFFIXES = (".jsonl", ".json", ".parquet")


class Problems:
    """Collects ``file:line: 'key': message`` lines (``origin`` in place of the file when there is no source, e.g.
    a command-line flag); raises them together."""

    def __init__(self, source: Source | None, origin: str | None = None):
        self.source, self.origin = source, origin
        self.lines: list[str] = []

    def add(self, key: str, message: str) -> None:
        where = self.source.of(key) if self.source is not None else None
        if where in (None, "<defaults>") and self.origin is not None:
            where = self.origin
        self.lines.append(f"{where}: '{key}': {message}" if where else f"'{key}': {message}")

    def call(self, key: str, fn: Callable, *args, **kwargs) -> tuple[bool, Any]:
        """``(True, fn(*args, **kwargs))``, or ``(False, None)`` with its error recorded under ``key``."""
        try:
            return True, fn(*args, **kwargs)
        except (KeyError, ValueError, TypeError, ImportError, OSError, RuntimeError) as e:
            self.add(key, e.args[0] if isinstance(e, KeyError) and e.args else str(e))
            return False, None

    def raise_if_any(self, what: str) -> None:
        if self.lines:
            head = f"{len(self.lines)} problems in the {what}:\n  " if len(self.lines) > 1 else ""
            raise ConfigError(head + "\n  ".join(self.lines))


def source_of(cfg: Any) -> Source | None:
    return getattr(cfg, "_source", None)


# ---------------------------------------------------------------- pieces shared by train, eval and score


def import_reward_modules(modules: list[str], problems: Problems, key: str = "reward_modules") -> None:
    """Import modules of ``@reward``-registered functions (by name from the cwd or sys.path, or a .py path)."""
    from longcot.registry import import_module_or_file

    for i, name in enumerate(modules):
        problems.call(f"{key}[{i}]", import_module_or_file, name)


def check_reward(name: str, options: dict, name_key: str, options_key: str, problems: Problems,
                 environment: bool = False) -> Callable | None:
    """A reward exists, takes its options, accepts their values (its ``validate``) and, with ``environment``,
    can run here (its ``check``: the code sandbox's probe). Returns the function, or None after a problem."""
    from longcot.rewards.registry import REWARDS, load_builtin_rewards

    load_builtin_rewards()
    ok, fn = problems.call(name_key, REWARDS.get, name)
    if not ok:
        return None
    ok, _ = problems.call(options_key, check_options, fn, options, where=f"reward '{name}'")
    if ok and getattr(fn, "validate", None) is not None:
        ok, _ = problems.call(options_key, fn.validate, **options)
    if ok and environment and getattr(fn, "check", None) is not None:
        ok, _ = problems.call(options_key, fn.check, **options)
    return fn if ok else None


def check_rewards(specs: list, problems: Problems, prefix: str = "rewards", environment: bool = False) -> None:
    for i, spec in enumerate(specs):
        check_reward(spec.name, spec.options, f"{prefix}[{i}].name", f"{prefix}[{i}].options", problems, environment)


def check_data_file(source: str, key: str, problems: Problems) -> None:
    """A local data file must exist (hub dataset names cannot be checked offline and pass)."""
    if source and Path(source).suffix in DATA_SUFFIXES and not Path(source).is_file():
        problems.add(key, f"data file not found: {source} (cwd {os.getcwd()})")


def check_model_path(path: str, key: str, problems: Problems) -> None:
    """A local model directory must exist and hold ``config.json``; a hub name (``org/name``) must be in the
    local Hugging Face cache when ``HF_HUB_OFFLINE`` is set."""
    p = Path(path).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            models = [c for c in ("checkpoints/final", "checkpoints/sft", "init") if (p / c / "config.json").is_file()]
            hint = f" (a run directory; did you mean {p / models[0]}?)" if models else ""
            problems.add(key, f"{path} exists but has no config.json: not a Hugging Face model directory{hint}")
        return
    # a hub name is "org/name"; "runs/x" is a local path when ./runs exists
    looks_local = path.startswith(("/", ".", "~")) or path.count("/") != 1 or p.parent.is_dir()
    if looks_local:
        problems.add(key, f"model path does not exist: {path} (cwd {os.getcwd()})")
    elif os.environ.get("HF_HUB_OFFLINE") == "1" and not _in_hub_cache(path):
        problems.add(key, f"model path does not exist: {path}, and no Hugging Face model of that name is cached "
                          "(HF_HUB_OFFLINE=1 forbids downloading it)")


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
    except ImportError:
        return True
    return (Path(HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}").is_dir()


# ---------------------------------------------------------------- the training recipe


def validate_recipe(recipe, source: Source | None = None, *, environment: bool = True) -> None:
    """Raise :class:`ConfigError` listing every problem of a training recipe (see module docstring)."""
    problems = Problems(source or source_of(recipe))
    import_reward_modules(recipe.reward_modules, problems)
    check_rewards(recipe.rewards, problems, environment=environment)
    _check_data(recipe, problems)
    _check_paths(recipe, problems)
    _check_combinations(recipe, problems)
    _check_rl(recipe, problems)  # imports torch (the loss and advantage registries): last
    problems.raise_if_any("recipe")


def _check_data(recipe, problems: Problems) -> None:
    from longcot.data import TASKS

    data = recipe.data
    if data.task not in TASKS:
        problems.add("data.task", f"unknown task '{data.task}'{did_you_mean(data.task, TASKS)}; "
                                  f"known: {', '.join(TASKS)}")
        return
    if data.task == "dataset":
        if not data.source:
            problems.add("data.source", "data.task=dataset needs data.source (a hub name, .jsonl, .json or .parquet)")
        check_data_file(data.source, "data.source", problems)
    else:
        _check_synthetic_ignores_sources(recipe, problems)
    _check_sources(recipe, problems)
    if data.task == "compound":
        from dataclasses import fields

        from longcot.data.compound import CompoundSpec

        known = {f.name for f in fields(CompoundSpec)}
        for k in sorted(set(data.task_options) - known):
            problems.add(f"data.task_options.{k}", f"unknown compound option{did_you_mean(k, known)}; "
                                                   f"valid: {', '.join(sorted(known))}")
        if not set(data.task_options) - known:
            problems.call("data.task_options", CompoundSpec, **{"max_operand": data.max_operand, **data.task_options})
    elif data.task == "codefit":
        from longcot.data.codefit import spec_from

        problems.call("data.task_options", spec_from, data)
    elif data.task_options:
        problems.add("data.task_options", f"task '{data.task}' takes no task_options (only compound and codefit do)")
    from longcot.data.samplers import SAMPLERS

    ok, cls = problems.call("data.sampler", SAMPLERS.get, data.sampler)
    if ok and "seed" in data.sampler_options:
        problems.add("data.sampler_options.seed", "the sampler's seed is the recipe's 'seed'; remove it here")
    elif ok:
        problems.call("data.sampler_options", check_options, _without_seed(cls.__init__), data.sampler_options,
                      where=f"sampler '{data.sampler}'")


def _check_synthetic_ignores_sources(recipe, problems: Problems) -> None:
    """A synthetic task makes its own problems: a data source, column mapping or held-out source set beside it
    would be ignored, and the run would train on the synthetic task while the user believes it trains on their
    data (``longcot train recipes/tiny/arith-moe.yaml data.source=my.jsonl`` did exactly that)."""
    task = recipe.data.task
    use = "set data.task=dataset to train on it (docs/data.md, 'Train on your own data')"
    for key, value in (("data.source", recipe.data.source), ("data.columns", recipe.data.columns),
                       ("eval.source", recipe.eval.source), ("eval.split", recipe.eval.split),
                       ("eval.columns", recipe.eval.columns)):
        if value:
            problems.add(key, f"is set, but data.task is '{task}', a synthetic task that makes its own training "
                              f"and held-out problems and would ignore it; {use}")


def _without_seed(fn: Callable) -> Callable:
    """``fn``'s signature less ``seed`` (make_sampler passes the recipe's seed itself)."""
    import inspect

    sig = inspect.signature(fn)

    def shown(*args, **kwargs):  # pragma: no cover - never called, only inspected
        pass

    shown.__signature__ = sig.replace(parameters=[p for n, p in sig.parameters.items() if n != "seed"])
    return shown


def _check_paths(recipe, problems: Problems) -> None:
    if recipe.model.path:
        check_model_path(recipe.model.path, "model.path", problems)
    for name, role in recipe.agents.subagents.items() if recipe.agents.enabled else ():
        if role.policy == "frozen" and role.path:
            check_model_path(role.path, f"agents.subagents.{name}.path", problems)
        if role.policy == "frozen" and role.recipe and not Path(role.recipe).is_file():
            problems.add(f"agents.subagents.{name}.recipe", f"specialist recipe not found: {role.recipe}")
    if recipe.agents.enabled:
        from longcot.agents.fidelity import get_check

        problems.call("agents.fidelity", get_check, recipe.agents.fidelity)


def _check_combinations(recipe, problems: Problems) -> None:
    """Option combinations that train on a biased objective without any error, or that would only fail late, deep
    in the run."""
    r, rl = recipe.rollout, recipe.rl
    truncated = r.top_p < 1.0 or r.top_k > 0
    readers = [k for k, on in (("rl.rollout_correction", rl.rollout_correction.active),
                               ("rl.kl_in=reward", bool(rl.kl_coef) and rl.kl_in == "reward")) if on]
    if truncated and readers:
        key = "rollout.top_p" if r.top_p < 1.0 else "rollout.top_k"
        problems.add(key, f"top_p={r.top_p}, top_k={r.top_k} sample from a truncated distribution, but "
                          f"{' and '.join(readers)} read the engine's log-probs as if they came from the full one "
                          "(the trainer computes full-vocabulary log-probs and applies no top-p/top-k mask): the "
                          "importance weights / KL are biased. Use top_p=1 and top_k=-1 for training rollouts")
    if rl.length_penalty_warmup and rl.length_penalty_reward not in {s.name for s in recipe.rewards}:
        problems.add("rl.length_penalty_warmup", f"schedules the weight of rl.length_penalty_reward="
                                                 f"'{rl.length_penalty_reward}', which is not one of the recipe's "
                                                 f"rewards ({', '.join(s.name for s in recipe.rewards)}): it would "
                                                 "schedule nothing")
    if r.engine == "hf":  # its options are known; a vLLM engine argument left in a recipe switched to hf failed only
        from longcot.rollout.hf import HFEngine  # when the engine was built (in Ray mode: a worker's creation task)

        given = {k: v for k, v in r.engine_options.items() if k != "seed"}
        problems.call("rollout.engine_options", check_options, HFEngine.__init__, given, "rollout engine 'hf'")
    _check_ray_overrides_need_ray(recipe, problems)
    if recipe.cluster.weight_transport == "nccl" and recipe.trainer.ranks > 1:
        problems.add("cluster.weight_transport", f"nccl broadcasts from the trainer actor's own copy of the policy, "
                                                 f"but with trainer.ranks={recipe.trainer.ranks} the policy lives in "
                                                 "the rank processes (not built yet, docs/cluster.md): use "
                                                 "cluster.weight_transport=object_store")


def _check_ray_overrides_need_ray(recipe, problems: Problems) -> None:
    """``cluster.*`` and ``rl.max_off_policy_steps`` configure Ray runs; a local run ignores them, so a recipe may keep
    them for both runtimes. Given on the command line without ``cluster.backend=ray``, though, they are a request
    that would silently not happen (``longcot train R cluster.rollout_workers=4`` ran one local process). An explicit
    ``cluster.backend=local`` beside them is a choice (a script comparing both runtimes with one set of keys)."""
    source = problems.source
    if recipe.cluster.backend != "local" or source is None or source.of("cluster.backend").startswith("override "):
        return
    for key, where in source.where.items():
        ray_only = (key.startswith("cluster.") and key != "cluster.backend") or key == "rl.max_off_policy_steps"
        if ray_only and where.startswith("override "):
            problems.add(key, "only applies to Ray runs, and cluster.backend is 'local' (one process, rollouts and "
                              "training take turns): add cluster.backend=ray (docs/cluster.md), or drop it")


def _check_rl(recipe, problems: Problems) -> None:
    """Loss, advantage and aggregation names; their options by signature and by one call on a tiny batch
    (the registered functions are pure, so a bad value fails here instead of mid-run)."""
    import torch

    from longcot.record import Trajectory
    from longcot.rl.advantages import ADVANTAGES, assign_advantages
    from longcot.rl.losses import AGGREGATIONS, LOSSES, LossBatch, policy_loss

    rl = recipe.rl
    _check_optimizers(recipe, problems)
    agg_ok = rl.aggregation in AGGREGATIONS
    if not agg_ok:
        problems.add("rl.aggregation", f"unknown aggregation '{rl.aggregation}'"
                                       f"{did_you_mean(rl.aggregation, AGGREGATIONS)}; "
                                       f"known: {', '.join(AGGREGATIONS)}")
    ok, fn = problems.call("rl.loss.name", LOSSES.get, rl.loss.name)
    if ok:
        ok, _ = problems.call("rl.loss.options", check_options, fn, rl.loss.options, where=f"loss '{rl.loss.name}'")
    if ok:
        lp = torch.tensor([[-1.0, -2.0, -0.5]])
        batch = LossBatch(logprobs=lp, old_logprobs=lp - 0.1, advantages=torch.tensor([[1.0, 1.0, 1.0]]),
                          mask=torch.ones(1, 3), ref_logprobs=lp - 0.2, rollout_logprobs=lp - 0.1,
                          entropy=torch.ones(1, 3))
        problems.call("rl.loss.options", policy_loss, batch, rl.loss.name, rl.loss.options,
                      agg=rl.aggregation if agg_ok else "token-mean", max_len=recipe.rollout.max_tokens,
                      tis_cap=rl.rollout_correction.tis_cap)
    ok, _ = problems.call("rl.advantage.name", ADVANTAGES.get, rl.advantage.name)
    if ok:
        group = [Trajectory(str(i), "g", [], [1], [-1.0], reward=float(i)) for i in range(3)]
        problems.call("rl.advantage.options", assign_advantages, group, rl.advantage.name, **rl.advantage.options)


# ---------------------------------------------------------------- longcot eval and longcot score


def check_grader(name: str, options: dict, problems: Problems, environment: bool) -> None:
    """An eval grader: a per-sample reward (by name or module:function) and its options."""
    fn = check_reward(name, options, "grader", "grader_options", problems, environment)
    if fn is not None and getattr(fn, "per_group", False):
        problems.add("grader", f"'{name}' is a per-group reward; a grader scores one response")


def validate_eval(cfg, *, responses: str | None = None, tokenizer: str | None = None,
                  environment: bool = True) -> None:
    """``longcot eval``: model (unless re-scoring), dataset file, grader, and the re-score inputs and output."""
    problems = Problems(source_of(cfg), origin="command line")
    import_reward_modules(cfg.reward_modules, problems)
    if responses is None:
        if not cfg.model:
            problems.add("model", "no model: set model=PATH_OR_HUB_NAME or --model")
        else:
            check_model_path(cfg.model, "model", problems)
    else:
        if not Path(responses).is_file():
            problems.add("--responses", f"file not found: {responses}")
        elif _same_file(Path(cfg.out) / "samples.jsonl", Path(responses)):
            problems.add("out", f"re-scoring would overwrite its input {responses} with {cfg.out}/samples.jsonl: "
                                "choose another --out")
        if tokenizer and not Path(tokenizer).exists() and tokenizer.count("/") != 1:
            problems.add("--tokenizer", f"tokenizer path does not exist: {tokenizer}")
    if not cfg.dataset.source:
        problems.add("dataset.source", "empty: a hub name or a .jsonl/.json/.parquet file (--dataset)")
    check_data_file(cfg.dataset.source, "dataset.source", problems)
    check_grader(cfg.grader, cfg.grader_options, problems, environment)
    problems.raise_if_any("eval config")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def validate_score(data: Path, out: Path, specs: list, reward_modules: list[str], tokenizer: str | None,
                   rows_have_ids: bool | None, *, environment: bool = True) -> None:
    """``longcot score``: the input exists, the output is not the input, every reward and option is known and
    can run here, and token-level rewards get token ids."""
    problems = Problems(None)
    if not data.is_file():
        problems.add("--data", f"file not found: {data}")
    if _same_file(data, out):
        problems.add("--out", f"{out} is the input file (--data): refusing to overwrite it")
    import_reward_modules(reward_modules, problems, key="--reward-module")
    for spec in specs:
        check_reward(spec.name, spec.options, "--rewards", f"--set {spec.name}.*", problems, environment)
    if tokenizer and not Path(tokenizer).exists() and tokenizer.count("/") != 1:
        problems.add("--tokenizer", f"tokenizer path does not exist: {tokenizer}")
    if rows_have_ids is False and not tokenizer:
        needs = [s.name for s in specs if s.name in TOKEN_REWARDS]
        if needs:
            problems.add("--rewards", f"{', '.join(needs)} counts token n-grams, but the rows have no response_ids: "
                                      "pass --tokenizer PATH (the model's tokenizer) or add response_ids to the rows")
    problems.raise_if_any("command")


TOKEN_REWARDS = ("repetition",)  # rewards that read token ids, not only a length


def _check_optimizers(recipe, problems: Problems) -> None:
    """``rl.optimizer`` and ``sft.optimizer``: known names, options by signature (a typo must not cost an SFT)."""
    from longcot.policies.optimizers import OPTIMIZERS
    from longcot.registry import check_options

    for key, section in (("rl", recipe.rl), ("sft", recipe.sft)):
        ok, fn = problems.call(f"{key}.optimizer", OPTIMIZERS.get, section.optimizer)
        if ok:
            problems.call(f"{key}.optimizer_options", check_options, fn, dict(section.optimizer_options),
                          where=f"{key}.optimizer[{section.optimizer}]")


def _check_sources(recipe, problems: Problems) -> None:
    """Column mappings (keys must be standard fields) and the extra sources of held-out and SFT rows."""
    from longcot.data.columns import check_mapping

    for key, mapping in (("data.columns", recipe.data.columns), ("eval.columns", recipe.eval.columns),
                         ("sft.columns", recipe.sft.columns)):
        problems.call(key, check_mapping, mapping, key)
    for key, source in (("eval.source", recipe.eval.source), ("sft.source", recipe.sft.source)):
        if source:
            check_data_file(source, key, problems)
