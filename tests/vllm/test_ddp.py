"""`rollout=vllm` with `trainer=ddp`: one colocated vLLM engine per rank, started on the
trainer's process group (vLLM's torchrun mode, agentrl/rollout/vllm_engine.py), 2 CPU processes
(gloo), in both pipeline modes.

Sync: the same run as one process with its one engine (tests/test_distributed.py's comparison:
each task's group sampled with its own seeded generator, so the episodes do not depend on which
rank holds the task). Overlap: each rank's rollout thread generates with its own engine while
the ranks update together."""

from __future__ import annotations

import pytest

from tests import test_distributed as td
from tests.test_train import rows_with

VLLM = ["rollout=vllm", "callbacks.export=null"]
DUMP = "+callbacks.dump._target_=tests.test_distributed.DumpParams"


def assert_engines_had_the_weights(rows, steps: int):
    """Every step updated, and each rank's rollout ran on the weights its engine was pushed:
    the behaviour log-probs are the trainer's (a stale engine on either rank would show)."""
    stepped = rows_with(rows, "perf/rollout_s")
    assert len(stepped) == steps
    assert all(r["loss/grad_norm"] > 0 for r in stepped), "a step without an update"
    assert all(r["rollout/logprob_diff"] < 1e-4 for r in stepped), [
        r["rollout/logprob_diff"] for r in stepped
    ]


@pytest.mark.slow
def test_ddp_with_vllm_engines_matches_one_process(tmp_path):
    cache = tmp_path / "cache"
    td.launch(tmp_path / "one", cache, *VLLM)
    td.launch(
        tmp_path / "ddp",
        cache,
        *VLLM,
        "trainer=ddp",
        DUMP,
        f"+callbacks.dump.dirpath={tmp_path / 'params'}",
    )
    single = {"rows": td.metrics_rows(tmp_path / "one"), "policy": td.policy_of(tmp_path / "one")}
    assert_engines_had_the_weights(single["rows"], 3)
    rows = td.metrics_rows(tmp_path / "ddp")
    assert_engines_had_the_weights(rows, 3)
    td.assert_close_params(td.rank_params(tmp_path / "params"), single)
    td.assert_same_run(rows, single)
    assert not list((cache / "vllm").iterdir()), "each rank's engine folder is removed"


@pytest.mark.slow
def test_ddp_overlap_each_rank_generates_with_its_own_engine(tmp_path):
    cache = tmp_path / "cache"
    td.launch(
        tmp_path / "run",
        cache,
        *VLLM,
        "trainer=ddp",
        "rollout.pipeline=overlap",
        # the real module: each rank's rollout thread samples with its own generator
        "module._target_=agentrl.module.AgentRLModule",
        DUMP,
        f"+callbacks.dump.dirpath={tmp_path / 'params'}",
    )
    steps = rows_with(td.metrics_rows(tmp_path / "run"), "pipeline/staleness_mean")
    assert [r["pipeline/staleness_mean"] for r in steps] == [0.0, 1.0, 1.0]
    assert all(r["loss/grad_norm"] > 0 for r in steps), "a step without an update"
    # the first batch is made by the weights its update trains, on both ranks' engines
    assert steps[0]["rollout/logprob_diff"] < 1e-4
    # the next ones by the weights pushed before the last update: corrected for the lag
    assert any(abs(r["pipeline/is_weight_mean"] - 1) > 1e-4 for r in steps[1:])
    td.rank_params(tmp_path / "params")
    assert not list((cache / "vllm").iterdir()), "each rank's engine folder is removed"
