"""``require_or_skip``: a test skips for what this machine lacks, and fails for it in CI
(AGENTRL_REQUIRE_ALL=1, set by .ci/run); every such skip goes through it."""

from __future__ import annotations

import re

import pytest

from tests.conftest import REQUIRE_ALL, ROOT, require_module, require_or_skip


def test_without_the_variable_it_skips_with_the_reason(monkeypatch):
    monkeypatch.delenv(REQUIRE_ALL, raising=False)
    with pytest.raises(pytest.skip.Exception, match="no widget here"):
        require_or_skip("no widget here")
    monkeypatch.setenv(REQUIRE_ALL, "0")
    with pytest.raises(pytest.skip.Exception, match="no widget here"):
        require_or_skip("no widget here")


def test_with_the_variable_it_fails_with_the_reason(monkeypatch):
    monkeypatch.setenv(REQUIRE_ALL, "1")
    with pytest.raises(pytest.fail.Exception, match=f"^{REQUIRE_ALL}=1 but no widget here$"):
        require_or_skip("no widget here")


def test_require_module_imports_or_says_how_to_install(monkeypatch):
    monkeypatch.setenv(REQUIRE_ALL, "1")
    assert require_module("json", "built in").dumps(1) == "1"
    with pytest.raises(pytest.fail.Exception, match=r"no_such_module_x.*\(.*; pip install x\)"):
        require_module("no_such_module_x", "pip install x")


def test_ci_requires_everything():
    """.ci/run exports the variable before it runs the suite."""
    script = (ROOT / ".ci" / "run").read_text()
    export = script.find(f"export {REQUIRE_ALL}=1\n")
    assert export != -1 and export < script.find("make test PYTEST_ARGS")


def test_no_test_skips_around_it():
    """An import-skip or a hard-coded Chromium path would skip in CI as well: none is left."""
    found = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        if path.name == "test_require.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"importorskip\(|/usr/bin/chromium", line):
                found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert found == []
