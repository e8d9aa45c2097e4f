"""A user's reward module, used by name ``tests.rewards.user_rewards:rank_in_group`` without registering."""


def rank_in_group(group, *, descending: bool = False) -> list[float]:
    order = sorted(range(len(group)), key=lambda i: len(group[i].response_ids), reverse=descending)
    return [float(order.index(i)) for i in range(len(group))]


rank_in_group.per_group = True
