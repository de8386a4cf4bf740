"""codegen: write a Python function; hidden tests judge it in the sandbox (``suite.py``; tasks:
``tasks.py``, bundled problems: ``problems.py``)."""

from agentrl.envs.codegen.suite import CodeGen

__all__ = ["CodeGen"]
