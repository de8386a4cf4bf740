"""The webnav browser backend: real headless Chromium (Debian's ``chromium``; CI installs it).

Without ``chromium`` on PATH these tests skip and say so (fail under AGENTRL_REQUIRE_ALL=1, as
in CI). Every test checks that no Chromium process
of its own is left behind and that its temporary profile is gone.
"""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path

import pytest

from agentrl.envs.webnav import WebNav
from agentrl.envs.webnav.browser import BrowserError, Chromium
from agentrl.envs.webnav.env import SiteError
from tests.conftest import require_chromium

SMALL = {"num_train": 10, "num_val": 6, "num_test": 6}


@pytest.fixture(autouse=True)
def chromium() -> str:
    """Chromium on PATH, which the suites find by the YAML's default name; else skip (fail in CI)."""
    return require_chromium()


def live_processes_of(profile: str) -> list[int]:
    """Live (not zombie) processes whose command line names ``profile``."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().decode(errors="replace")
            state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if profile in cmd and state != "Z":
            pids.append(int(d.name))
    return pids


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # only zombies may remain (reaped by init); none of them runs
    return any(
        p for p in Path("/proc").iterdir() if p.name.isdigit() and _pgid_state(p) == (pgid, True)
    )


def _pgid_state(p: Path):
    try:
        fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[2]), fields[0] != "Z"


def assert_released(browser_info: tuple[str, int]) -> None:
    profile, pgid = browser_info
    assert not live_processes_of(profile), "a Chromium process outlived close()"
    assert not group_alive(pgid)
    assert not os.path.exists(profile)


def started(suite: WebNav) -> tuple[str, int]:
    b = suite.browser()
    return b.profile, b.proc.pid


def test_javascript_content_only_in_the_browser_and_oracle_solves_it():
    with WebNav(seed=0, backend="browser", **SMALL) as suite:
        info = started(suite)
        task = next(t for t in suite.tasks("val") if t.meta["goal"] == "buy")
        browser_env, text_env = suite.make(), suite.make(backend="text")
        browser_home, text_home = browser_env.reset(task), text_env.reset(task)
        # the deal box is filled by a script: only the browser shows it, and it is clickable
        assert "Deal: [9]" in browser_home and "Deal" not in text_home
        assert browser_home.startswith(text_home)
        deal = browser_env.page.element(9)
        assert browser_env.step("click [9]")[0].startswith(deal.label.split(",")[0])
        # the text-backend oracle's actions solve the task in the browser as well
        env = suite.make()
        env.reset(task)
        for action in suite.oracle(task, random.Random(0)):
            env.step(action)
        assert env.done and suite.verify(task, env)
        assert env.history[-1][2] == 1.0
    assert_released(info)


def test_browser_errors_are_observations_and_interleaved_episodes_stay_apart():
    with WebNav(seed=0, backend="browser", **SMALL) as suite:
        info = started(suite)
        tasks = [t for t in suite.tasks("val") if t.meta["goal"] == "price"][:2]
        a, b = suite.make(), suite.make()
        a.reset(tasks[0])
        b.reset(tasks[1])
        assert a.step("click [42]")[0].startswith("error: no element [42]")
        assert a.step('type [3] "zzz"')[0] == '[3] search="zzz"'
        b.step(f'type [3] "{tasks[1].meta["item"]["name"]}"')
        # a's typed value survives b's use of the shared tab
        assert a.step("submit")[0].startswith("Search: zzz\n")
        assert b.step("submit")[0].startswith(f"Search: {tasks[1].meta['item']['name']}")
    assert_released(info)


def test_chromium_is_killed_after_an_exception():
    with pytest.raises(RuntimeError, match="boom"), WebNav(seed=0, backend="browser", **SMALL) as s:
        s.make().reset(s.tasks("val")[0])
        info = started(s)
        raise RuntimeError("boom")
    assert_released(info)


def test_a_crashed_browser_fails_the_episode_and_is_restarted():
    with WebNav(seed=0, backend="browser", **SMALL) as suite:
        task = suite.tasks("val")[0]
        env = suite.make()
        env.reset(task)
        first = started(suite)
        os.killpg(first[1], signal.SIGKILL)
        with pytest.raises(SiteError):
            env.step("click [5]")
        env = suite.make()  # a fresh Chromium
        assert "[1] Home" in env.reset(task)
        second = started(suite)
        assert second != first
    assert_released(first)
    assert_released(second)


def test_chromium_restarted_every_recycle_pages_is_invisible_to_the_episodes():
    """Two interleaved episodes (one with a typed field pending) and an oracle episode on a
    Chromium restarted every 2 page loads see exactly what they see on one never restarted;
    every process it went through is released."""

    def play(recycle: int):
        with WebNav(seed=0, backend="browser", **SMALL) as suite:
            browser = suite.browser()
            browser.recycle_pages = recycle
            seen = []

            def note(text):
                if (browser.profile, browser.proc.pid) not in seen:
                    seen.append((browser.profile, browser.proc.pid))
                return text

            tasks = [t for t in suite.tasks("val") if t.meta["goal"] == "price"][:2]
            a, b = suite.make(), suite.make()
            obs = [note(a.reset(tasks[0])), note(b.reset(tasks[1]))]
            obs.append(note(a.step('type [3] "zzz"')[0]))
            obs.append(note(b.step(f'type [3] "{tasks[1].meta["item"]["name"]}"')[0]))
            for env in (a, b, b, a):
                obs.append(note(env.step("submit" if env is a else "click [5]")[0]))
            task = next(t for t in suite.tasks("val") if t.meta["goal"] == "buy")
            env = suite.make()
            obs.append(note(env.reset(task)))
            for action in suite.oracle(task, random.Random(0)):
                obs.append(note(env.step(action)[0]))
            assert env.done and suite.verify(task, env)
            restarts = browser.restarts
        for info in seen:
            assert_released(info)
        return obs, restarts, len(seen)

    want, restarts, processes = play(10**6)
    assert restarts == 0 and processes == 1
    got, restarts, processes = play(2)
    assert restarts >= 3 and processes == restarts + 1
    assert got == want


def test_missing_executable_is_one_clear_error(chromium):
    for missing in ("/nope", "no-such-chromium"):
        with pytest.raises(BrowserError, match=f"Chromium not found: '{missing}' is not an"):
            Chromium(missing).start()
    # a path works as well as the name on PATH
    with Chromium(chromium) as b:
        assert b.alive
        info = b.profile, b.proc.pid
    assert_released(info)
