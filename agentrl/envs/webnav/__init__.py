"""webnav: web navigation over real HTTP (a generated shop), with a text and a browser backend."""

from agentrl.envs.webnav.suite import WebNav

__all__ = ["WebNav"]
