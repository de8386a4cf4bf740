"""external: your own agent program as the policy's env, through the gateway (``suite.py``; worker
processes: ``workers.py``, ``agent_worker.py``)."""

from agentrl.envs.external.suite import ExternalAgent

__all__ = ["ExternalAgent"]
