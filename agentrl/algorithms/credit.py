"""Credit assignment for multi-step episodes: which tokens get which advantage.

``algorithm.credit`` picks one:

- ``trajectory``: the episode's advantage broadcast to all its generated tokens ([N]).
- ``turn``: per-turn rewards give per-turn discounted returns; turn k of an episode is compared
  with turn k of the episodes of its group that reached turn k (a critic-free per-turn group
  baseline, normalised like GRPO), and each turn's tokens get their own advantage ([N, T]).
- ``transition``: each LLM call (turn) is its own sample; inside an episode each turn carries
  1 / num_turns of the episode's weight, spread evenly over its tokens, so every episode weighs
  the same however many calls it made ([N, T]).

Per-turn rewards: ``Trajectory.turns[k].reward`` (the env's step reward) for every turn but the
last, and the scored episode reward (``Trajectory.reward``, the KL penalty included in
``kl_mode=reward``) on the last turn, in place of the env's last step reward, which the episode
reward already judges.

Token columns follow ``TokenBatch``: the generated token at index i of ``token_ids`` is column
i - 1 of the [N, T-1] tensors, so a turn with span (s, e) covers columns s - 1 .. e - 2.
"""

from __future__ import annotations

import torch

from agentrl.algorithms import functional as F
from agentrl.types import Trajectory

CREDITS = ("trajectory", "turn", "transition")


def check(algo) -> None:
    """Raise a ValueError naming the field for a credit setting that cannot work."""
    if algo.credit not in CREDITS:
        raise ValueError(f"algorithm.credit must be one of {CREDITS}, got {algo.credit!r}")
    if algo.credit == "transition" and algo.aggregation != "seq_mean_token_mean":
        raise ValueError(
            "algorithm.credit=transition weights each episode equally and needs "
            f"algorithm.aggregation=seq_mean_token_mean, got {algo.aggregation!r}"
        )
    gamma = getattr(algo, "turn_gamma", 1.0)
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"algorithm.turn_gamma must be in [0, 1], got {gamma}")


def turn_rewards(traj: Trajectory, final_reward: float) -> list[float]:
    """The reward of each turn: the env's step rewards, ``final_reward`` on the last turn."""
    rewards = [t.reward for t in traj.turns]
    if rewards:
        rewards[-1] = final_reward
    return rewards


def discounted_returns(rewards: list[float], gamma: float) -> list[float]:
    """G_k = r_k + gamma * G_{k+1}, from the last turn back."""
    out, running = [], 0.0
    for r in reversed(rewards):
        running = r + gamma * running
        out.append(running)
    return out[::-1]


def turn_group_advantages(
    returns: list[list[float]], groups: torch.Tensor, scale: bool = True
) -> list[list[float]]:
    """Per-turn advantages: turn k's return minus the mean of the turn-k returns of the group's
    episodes that reached turn k (divided by their std when ``scale``); a turn only one episode of
    its group reached gets 0. returns: N lists of per-turn returns; groups: [N] int."""
    flat = torch.tensor([g for ep in returns for g in ep], dtype=torch.float32)
    depth = max((len(ep) for ep in returns), default=1)
    keys = torch.tensor(
        [int(groups[n]) * depth + k for n, ep in enumerate(returns) for k in range(len(ep))]
    )
    if flat.numel() == 0:
        return [[] for _ in returns]
    adv = F.group_advantages(flat, keys, scale=scale).tolist()
    out, pos = [], 0
    for ep in returns:
        out.append(adv[pos : pos + len(ep)])
        pos += len(ep)
    return out


def spread(per_turn: list[list[float]], trajs: list[Trajectory], width: int) -> torch.Tensor:
    """Per-turn values onto the token columns of each turn's span: [N, width], 0 elsewhere."""
    out = torch.zeros(len(trajs), width)
    for n, (traj, vals) in enumerate(zip(trajs, per_turn)):
        for turn, v in zip(traj.turns, vals):
            s, e = turn.span
            out[n, max(s - 1, 0) : e - 1] = v
    return out


def transition_weights(trajs: list[Trajectory], width: int) -> torch.Tensor:
    """[N, width] token weights: 1 / (num_turns * turn_length) on each turn's tokens, so each
    turn sums to 1 / num_turns and each episode to 1 (turns without tokens are not counted)."""
    per_turn = []
    for traj in trajs:
        lengths = [t.span[1] - t.span[0] for t in traj.turns]
        k = sum(1 for n in lengths if n > 0)
        per_turn.append([1.0 / (k * n) if n > 0 else 0.0 for n in lengths])
    return spread(per_turn, trajs, width)


def turn_advantages(
    trajs: list[Trajectory],
    rewards: torch.Tensor,
    groups: torch.Tensor,
    gamma: float,
    width: int,
    scale: bool = True,
) -> torch.Tensor:
    """``credit=turn``: [N] episode rewards -> [N, width] token advantages."""
    returns = [discounted_returns(turn_rewards(t, float(r)), gamma) for t, r in zip(trajs, rewards)]
    return spread(turn_group_advantages(returns, groups.cpu(), scale), trajs, width)


def reweight_transitions(
    advantages: torch.Tensor, trajs: list[Trajectory], width: int
) -> torch.Tensor:
    """``credit=transition``: advantages [N] or [N, width] -> [N, width] times the transition
    weights rescaled to mean 1 over each episode's tokens. Under ``seq_mean_token_mean`` an
    episode's loss is then the weighted sum of its token losses (weights summing to 1). Folding
    the weights into the advantages is exact: the clipped surrogate scales with A for A's sign
    fixed and a positive weight."""
    w = transition_weights(trajs, width).to(advantages.device)
    tokens = (w > 0).sum(-1, keepdim=True)
    adv = advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages
    return adv * w * tokens


def advantages(algo, trajs, rewards, groups, width: int, scale: bool = True) -> torch.Tensor:
    """The critic-free algorithms' advantages under ``algo.credit``: [N] for ``trajectory``,
    [N, width] otherwise. ``algo.episode_advantages(rewards, groups)`` gives the episode advantages."""
    if algo.credit == "turn":
        adv = turn_advantages(trajs, rewards, groups, algo.turn_gamma, width, scale)
        return adv.to(rewards.device)
    adv = algo.episode_advantages(rewards, groups)
    if algo.credit == "transition":
        return reweight_transitions(adv, trajs, width)
    return adv


def token_rewards(trajs: list[Trajectory], rewards: torch.Tensor, credit: str, width: int):
    """PPO's rewards [N, width]: on the last generated token of the episode (``trajectory`` and
    ``transition``), or each turn's reward on that turn's last generated token (``turn``)."""
    out = torch.zeros(len(trajs), width)
    for n, (traj, r) in enumerate(zip(trajs, rewards.tolist())):
        if credit == "turn":
            per_turn = turn_rewards(traj, r)
        else:
            per_turn = [0.0] * (len(traj.turns) - 1) + [r]
        for turn, v in zip(traj.turns, per_turn):
            if turn.span[1] > turn.span[0]:
                out[n, turn.span[1] - 2] += v
    return out.to(rewards.device)
