"""The KL coefficient: fixed, or the adaptive controller of Ziegler et al. (2019)."""

from __future__ import annotations


class KLController:
    """Holds the current KL coefficient ``value``; adapts it toward a target KL when ``target``
    is set, and keeps it fixed at ``init_coef`` otherwise.

    Adaptive rule (Ziegler et al., "Fine-Tuning Language Models from Human Preferences", 2019,
    as in OpenAI's lm-human-preferences and TRL's former AdaptiveKLController):
        error = clip(current_kl / target - 1, -0.2, 0.2)
        value <- value * (1 + error * n_steps / horizon)
    ``current_kl`` is the mean over the step's episodes of their KL(policy || reference) in nats
    per episode (``functional.sequence_kl``), ``n_steps`` the number of episodes in the step and
    ``horizon`` is in episodes too: a KL persistently 20% off target moves the coefficient by
    about e^0.2 every ``horizon`` episodes.
    """

    def __init__(self, init_coef: float, target: float | None = None, horizon: int = 10000):
        self.value = float(init_coef)
        self.target = target
        self.horizon = horizon

    @property
    def adaptive(self) -> bool:
        return self.target is not None

    def update(self, current_kl: float, n_steps: int) -> float:
        """Adapt to the KL just measured over ``n_steps`` episodes; returns the new value."""
        if self.adaptive:
            error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
            self.value *= 1.0 + error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])
