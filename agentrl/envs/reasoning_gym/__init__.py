"""reasoning_gym: the datasets of the reasoning_gym package as envs (``suite.py``)."""

from agentrl.envs.reasoning_gym.suite import ReasoningGym

__all__ = ["ReasoningGym"]
