"""Your own reward: a plain function ``(task, trajectory) -> float``.

Plug it in from the command line (the module must be importable, and allowed as a ``_target_``):

    AGENTRL_EXTRA_TARGETS=examples. python launch.py \
        reward._target_=examples.my_reward.brevity_bonus '~reward.success_weight' ...

or, simpler, with the config of this example (conf/reward/my_reward.yaml is not needed: pass the
whole node):

    AGENTRL_EXTRA_TARGETS=examples. python launch.py reward=composite \
        +reward.parts.brevity.reward._target_=examples.my_reward.brevity_bonus \
        +reward.parts.brevity.reward._partial_=true +reward.parts.brevity.weight=0.5

``_partial_: true`` makes Hydra hand over the function itself instead of calling it. A float
return value is logged as ``reward/<function name>``; return
``agentrl.rewards.base.RewardOutput(total, {name: value, ...})`` for several named parts.
"""

from agentrl.types import Task, Trajectory


def brevity_bonus(task: Task, trajectory: Trajectory, per_turn: float = 0.1) -> float:
    """1 for a solved episode, minus ``per_turn`` for each turn beyond the fewest possible."""
    if not trajectory.success:
        return 0.0
    fewest = task.meta.get("num_ops", 0) + 1
    return 1.0 - per_turn * max(0, len(trajectory.turns) - fewest)
