"""tooluse: warehouse questions answered with several tools, one of them a price API over real
HTTP (``suite.py``, ``price_service.py``)."""

from agentrl.envs.tooluse.suite import ToolUse

__all__ = ["ToolUse"]
