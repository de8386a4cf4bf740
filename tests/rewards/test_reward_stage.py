"""The reward-model stage: it runs for a learned reward inside a composite too, and the learned
reward, its training and the warm start never import the training entry point (the import cycle
rewards/learned -> rewards/training -> train -> rewards/training stays gone)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import agentrl
from agentrl.models.factory import TinyModel
from agentrl.rewards.composite import CompositeReward, Part
from agentrl.rewards.learned import LearnedReward
from agentrl.rewards.training import learned_rewards, reward_model_stage


def backbone():
    return TinyModel(
        hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64, seed=0
    )


def length(task, trajectory) -> float:
    return 0.0


def test_the_stage_loads_a_learned_reward_inside_a_composite(tmp_path):
    saved = LearnedReward(backbone(), device="cpu")
    saved.build()
    saved.save(tmp_path / "rm", {"val_accuracy": 0.5})
    inner = LearnedReward(backbone(), checkpoint=str(tmp_path / "rm"), device="cpu")
    outer = CompositeReward({"rm": Part(inner), "other": Part(length)})
    assert learned_rewards(outer) == [inner]
    # a checkpoint is configured: the stage needs neither the run's config nor the env
    assert reward_model_stage(None, outer, None) == [tmp_path / "rm"]
    assert inner.model is not None and inner.info == {"val_accuracy": 0.5}
    for a, b in zip(saved.model.state_dict().values(), inner.model.state_dict().values()):
        assert a.equal(b)
    assert reward_model_stage(None, Part(length).reward, None) == []


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_no_module_of_the_package_imports_the_training_entry_point():
    """Also the imports inside functions (the cycle was one): only launch.py uses agentrl.train."""
    package = Path(agentrl.__file__).parent
    offenders = [
        str(p.relative_to(package))
        for p in package.rglob("*.py")
        if p.name != "train.py" and "agentrl.train" in _imports(p)
    ]
    assert offenders == []


def test_importing_the_learned_reward_loads_no_training_entry_point():
    code = (
        "import sys, agentrl.rewards.learned, agentrl.rewards.training, agentrl.warmstart;"
        "print('agentrl.train' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    assert out.stdout.strip() == "False"
