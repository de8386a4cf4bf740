"""The one place configs become objects (Hydra ``_target_``), behind an allow-list of modules.

Targets outside the allow-list are refused before anything is imported, so a config can only
build what the project (or the user, through ``AGENTRL_EXTRA_TARGETS``, comma-separated module
prefixes) allows.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig, ListConfig, OmegaConf

ALLOWED_PREFIXES = (
    "agentrl.",
    "lightning.",
    "torch.optim.",
    "peft.",
    "transformers.",
    "hydra_plugins.",
    "submitit.",
)


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the field and the fix."""


def _allowed() -> tuple[str, ...]:
    extra = tuple(
        p.strip() for p in os.environ.get("AGENTRL_EXTRA_TARGETS", "").split(",") if p.strip()
    )
    return ALLOWED_PREFIXES + extra


def _check_targets(node: Any, path: str) -> None:
    if isinstance(node, (DictConfig, Mapping)):
        target = node.get("_target_") if "_target_" in node else None
        if target is not None and not str(target).startswith(_allowed()):
            raise ConfigError(
                f"{path or 'config'}._target_={target!r} is not an allowed target (allowed module "
                f"prefixes: {', '.join(_allowed())}; extend with AGENTRL_EXTRA_TARGETS)"
            )
        for key in node:
            # a DictConfig's raw node: an interpolation is not resolved to be checked
            child = node._get_node(key) if isinstance(node, DictConfig) else node[key]
            _check_targets(child, f"{path}.{key}" if path else str(key))
    elif isinstance(node, (ListConfig, list, tuple)):
        for i, item in enumerate(node):
            _check_targets(item, f"{path}[{i}]")


def check_targets(cfg: DictConfig, path: str = "") -> None:
    """Refuse a ``_target_`` outside the allow-list anywhere in ``cfg`` (nothing is imported)."""
    _check_targets(cfg, path)


def instantiate(cfg: DictConfig | Mapping | None, path: str = "", **kwargs: Any) -> Any:
    """hydra.utils.instantiate with the allow-list; the underlying ValueError/TypeError of a
    constructor surfaces as a ConfigError naming the config node."""
    if cfg is None:
        return None
    _check_targets(cfg, path)
    try:
        return hydra.utils.instantiate(cfg, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__ or exc
        raise ConfigError(f"{path or 'config'}: {cause}") from cause


def to_container(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
