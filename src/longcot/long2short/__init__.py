"""long2short (Kimi k1.5, section 2.4): turn a long-CoT policy into one that answers with far fewer tokens.

Four methods, one command (``longcot long2short RECIPE``, docs/long2short.md): ``merge`` (weight averaging with a
short model, :mod:`.merge`), ``shortest_rejection`` (SFT on the shortest correct of n samples, :mod:`.rejection`),
``dpo`` (shortest correct against longer or wrong, TRL's DPOTrainer, :mod:`.dpo`) and ``rl`` (a second RL phase
with the k1.5 length reward from step 0 and a smaller rollout budget, :mod:`.rl`). :mod:`.report` draws the
token-efficiency plot. This module imports nothing heavy: the recipe schema includes :mod:`.config`.
"""
