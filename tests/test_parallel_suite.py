"""How `make test` spreads the suite over pytest-xdist workers (tests/conftest.py): the SmolLM2
tests on one worker (each holds several GB), the SLURM tests on one (one small cluster), the
longest tests first, and each worker's share of the cores."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests import conftest
from tests.conftest import LONGEST_FIRST, ROOT


class FakeItem:
    def __init__(self, nodeid: str, markers=(), fixturenames=()):
        self.nodeid = nodeid
        self.fixturenames = list(fixturenames)
        self.markers = [pytest.Mark(name, (), {}) for name in markers]

    def add_marker(self, marker):
        self.markers.append(marker.mark)

    def get_closest_marker(self, name):
        return next((m for m in self.markers if m.name == name), None)

    def group(self):
        mark = self.get_closest_marker("xdist_group")
        return mark.args[0] if mark else None


def test_real_model_and_slurm_tests_are_grouped_and_the_longest_go_first():
    items = [
        FakeItem("tests/test_a.py::test_unit"),
        FakeItem("tests/test_a.py::test_end_to_end", markers=["slow"]),
        FakeItem("tests/models/test_models.py::test_smollm2_converts", markers=["slow"]),
        FakeItem(
            "tests/rewards/test_judge.py::test_local_judge",
            markers=["slow"],
            fixturenames=["smollm2_models"],
        ),
        FakeItem("tests/test_slurm.py::test_sweep", markers=["slurm", "slow"]),
        FakeItem(LONGEST_FIRST[1] + "[x]", markers=["slow"]),
        FakeItem(LONGEST_FIRST[0], markers=["slow"]),
    ]
    conftest.pytest_collection_modifyitems(None, items)
    order = [i.nodeid for i in items]
    assert order[:2] == [LONGEST_FIRST[0], LONGEST_FIRST[1] + "[x]"]
    assert order[-1] == "tests/test_a.py::test_unit"  # fast tests last, slow ones before them
    groups = {i.nodeid: i.group() for i in items}
    assert groups["tests/models/test_models.py::test_smollm2_converts"] == "smollm2"
    assert groups["tests/rewards/test_judge.py::test_local_judge"] == "smollm2"
    assert groups["tests/test_slurm.py::test_sweep"] == "slurm"
    assert groups["tests/test_a.py::test_end_to_end"] is None


def test_every_longest_first_name_is_a_test_of_the_suite(request):
    """A renamed test would silently lose its place at the front."""
    ids = [i.nodeid for i in request.session.items]
    if len(ids) < 100:
        pytest.skip("only part of the suite was collected")
    for prefix in LONGEST_FIRST:
        assert any(i.startswith(prefix) for i in ids), prefix


def test_a_worker_gets_its_share_of_the_cores():
    code = (
        "import os, torch; from tests import conftest; conftest.pytest_configure(None); "
        "print(os.environ['OMP_NUM_THREADS'], torch.get_num_threads())"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["PYTEST_XDIST_WORKER_COUNT"] = str(os.cpu_count() or 1)
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["1", "1"]
    # a caller's OMP_NUM_THREADS is kept
    env["OMP_NUM_THREADS"] = "7"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[0] == "7"
