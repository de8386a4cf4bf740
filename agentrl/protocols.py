"""The component contracts, as ``typing.Protocol`` classes: Reward, Algorithm (RL or preference),
Runner and Engine.

Each protocol lists what a component must have (members without a body) and what it may have
(members with a default body). Every component of the package subclasses its protocol, so an
optional capability is declared by overriding the default, never probed with ``hasattr``; the
defaults are the "does not have it" answer (``metrics() -> {}``, ``state_dict() -> {}``, ...).
A component written outside the package may implement the protocol structurally instead (the
protocols are ``runtime_checkable``); a reward that is a plain function is adapted once, by
``agentrl.rewards.base.as_reward``.

The metrics protocol, shared by rewards, runners and env suites: ``metrics()`` is a snapshot of
the component's statistics of its most recent batch (or run) and of its running totals (named
``*_total``). Reading it resets nothing; the component starts its per-batch counts afresh when
the next batch starts. Keys may carry their namespace already (``reward/api_retries``); the one
collector (``agentrl.metrics_channel``) adds it to those that do not, and reads each source once
per training step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

    from agentrl.rollout.engine import Generation, SamplingParams
    from agentrl.types import Task, Trajectory


@runtime_checkable
class Reward(Protocol):
    """``(task, trajectory) -> RewardOutput | float``, scored in batches by the loop.

    Required: ``name`` (the component a bare float is logged as) and ``__call__``.
    Optional (defaults here): ``score_batch`` (one result per trajectory, an exception in place of
    a failed one; override where a batch is cheaper: HTTP, judges, reward models), ``metrics``,
    ``state_dict``/``load_state_dict`` (what the run's checkpoints keep, e.g. running statistics).
    """

    name: str

    def __call__(self, task: Task, trajectory: Trajectory) -> Any: ...

    def score_batch(self, trajectories: list[Trajectory]) -> list:
        from agentrl.rewards.base import RewardUnavailable

        outs: list = []
        for traj in trajectories:
            try:
                outs.append(self(traj.task, traj))
            except RewardUnavailable:
                raise
            except Exception as exc:  # that episode fails, the others are scored
                outs.append(exc)
        return outs

    def metrics(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None


@runtime_checkable
class Algorithm(Protocol):
    """What every algorithm has, whichever step runs it (``step``: ``rl`` or ``preference``).

    ``needs_values`` (a value head is built) defaults to False; ``max_completion_length`` (the
    fixed divisor of ``seq_mean_token_sum_norm``) to None.
    """

    step: str
    group_size: int
    epochs: int
    minibatches: int
    max_grad_norm: float
    aggregation: str | None
    needs_values: bool = False
    max_completion_length: int | None = None

    @property
    def needs_reference(self) -> bool: ...

    def loss(self, *args, **kwargs): ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@runtime_checkable
class RLAlgorithm(Algorithm, Protocol):
    """An algorithm of the RL step (``agentrl/rl_step.py``): rewards -> advantages -> loss.

    ``loss(logprobs, old_logprobs, ref_logprobs, advantages, mask, behaviour_logprobs=...,
    [values, old_values, returns]) -> (loss, stats)``.
    """

    kl_mode: str
    kl_estimator: str
    kl_controller: Any

    def keep_mask(self, rewards: torch.Tensor, groups: torch.Tensor) -> torch.Tensor: ...

    def kl_in_reward(self, rewards, logprobs, ref_logprobs, mask) -> torch.Tensor: ...

    def advantages(self, trajs, rewards: torch.Tensor, groups: torch.Tensor, scored): ...


@runtime_checkable
class PreferenceAlgorithm(Algorithm, Protocol):
    """An algorithm of the preference step (``agentrl/preference.py``): pairs -> loss.

    ``loss(logprobs, ref_logprobs, mask) -> (loss, stats)`` on rows [chosen_0, rejected_0, ...].
    """

    pairs: str
    perturbations: list[str]
    max_tries: int
    file_pairs: list


@runtime_checkable
class Runner(Protocol):
    """Produces a batch of trajectories with one engine: ``EpisodeRunner`` (in-process env
    episodes) or ``ExternalRunner`` (agent programs through the gateway).

    Required: ``suite``, ``chat``, ``run``. Optional: ``sampling`` (the suite's action length
    and stop strings with the given temperature), ``metrics`` (logged under ``namespace``).
    """

    suite: Any
    chat: Any
    # the prefix of this runner's metrics (``gateway/...``)
    namespace: str = "rollout"

    def run(
        self,
        tasks: list[Task],
        groups: list[int],
        params: SamplingParams,
        generator: torch.Generator | None = None,
    ) -> list[Trajectory]: ...

    def sampling(self, temperature: float, top_p: float, greedy: bool) -> SamplingParams:
        from agentrl.rollout.engine import SamplingParams

        return SamplingParams(
            max_new_tokens=self.suite.max_action_tokens,
            temperature=temperature,
            top_p=top_p,
            greedy=greedy,
            stop_token_ids=[self.chat.end_of_turn_id],
            stop_strings=list(self.suite.stop_strings),
        )

    def metrics(self) -> dict[str, float]:
        return {}


@runtime_checkable
class Engine(Protocol):
    """``generate(prompts as token ids, params) -> token ids + behaviour log-probs``.

    ``bind`` gives it the policy (once, and for a reference rollout), ``sync`` the weights after
    each update. ``streams_tokens``: ``generate`` takes ``on_token(i, token_id, logprob)``, called
    as each token is sampled (the gateway streams with it); False by default.
    ``shares_weights``: the engine generates with the trainer's own model object (the HF
    engine), so ``rollout.pipeline=overlap`` gives its thread a copy; False by default.
    ``reuses_prefixes``: ``generate`` takes ``prefixes``, a ``PrefixCache`` kept for one batch of
    episodes, and prefills each turn from where the episode's cached tokens end (the HF engine);
    False by default.
    """

    name: str
    streams_tokens: bool = False
    shares_weights: bool = False
    reuses_prefixes: bool = False

    def bind(self, model, tokenizer) -> None: ...

    def sync(self, model) -> None: ...

    def generate(
        self,
        prompts: list[list[int]],
        params: SamplingParams,
        generator: torch.Generator | None = None,
    ) -> list[Generation]: ...
