"""The training step's layout: the steps and the updater never reach into the module, the module
runs the step its algorithm names, and a checkpoint from before the buffer left the loop loads."""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from agentrl.module import STEPS, AgentRLModule
from agentrl.preference import preference_step
from agentrl.rl_step import rl_step
from agentrl.rng import rng_state

PKG = Path(__file__).resolve().parents[1] / "agentrl"


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


@pytest.mark.parametrize(
    "name", ["rl_step.py", "preference.py", "updater.py", "step_data.py", "step_metrics.py"]
)
def test_steps_and_updater_do_not_import_the_module(name):
    # the module imports them: an import back would be a cycle
    assert "agentrl.module" not in imported_modules(PKG / name)


def test_steps_use_no_private_method_of_the_module():
    for name in ("rl_step.py", "preference.py"):
        for node in ast.walk(ast.parse((PKG / name).read_text())):
            named = isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
            if named and node.value.id == "module":
                # _trainer: Lightning's, read where no trainer may be attached
                assert not node.attr.startswith("_") or node.attr == "_trainer", node.attr


def test_the_algorithm_names_its_step():
    assert {"rl": rl_step, "preference": preference_step} == STEPS
    bad = SimpleNamespace(step="offline", needs_reference=False)
    with pytest.raises(ValueError, match="algorithm.step must be one of"):
        AgentRLModule(None, None, None, None, bad, None, None)


def test_a_checkpoint_with_the_old_buffer_entry_loads():
    host = SimpleNamespace(
        rl_step=0,
        counters={"failed_episodes": 0, "skipped_updates": 0},
        algorithm=SimpleNamespace(load_state_dict=lambda s: None),
        reward=None,
        _trainer=None,
    )
    state = {
        "rl_step": 3,
        "counters": {"failed_episodes": 1, "skipped_updates": 0},
        "buffer": {"items": [], "dropped": 0, "last": {}},
        "algorithm": {},
        "rng": rng_state(),
    }
    torch.manual_seed(1)
    AgentRLModule.on_load_checkpoint(host, {"agentrl": state})
    assert host.rl_step == 3 and host.counters["failed_episodes"] == 1


def test_scored_batch_select_takes_the_rows_of_every_field():
    from agentrl.batching import TokenBatch
    from agentrl.step_data import ScoredBatch

    ids = torch.arange(12).reshape(3, 4)
    batch = TokenBatch(ids, torch.ones_like(ids), torch.ones(3, 3), torch.zeros(3, 3))
    per_token = torch.arange(9.0).reshape(3, 3)
    scored = ScoredBatch(batch, old=per_token, advantages=torch.tensor([1.0, 2.0, 3.0]))
    sub = scored.select(torch.tensor([2, 0]))
    assert sub.batch.input_ids.tolist() == [ids[2].tolist(), ids[0].tolist()]
    assert sub.old.tolist() == [per_token[2].tolist(), per_token[0].tolist()]
    assert sub.advantages.tolist() == [3.0, 1.0]
    assert sub.ref is None and sub.values is None and sub.returns is None
