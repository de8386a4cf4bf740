"""toolcalc: multi-step arithmetic solved with a calculator tool (``suite.py``)."""

from agentrl.envs.toolcalc.suite import ToolCalc

__all__ = ["ToolCalc"]
