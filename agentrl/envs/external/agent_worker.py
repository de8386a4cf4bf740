"""One long-lived worker of ``env=external``'s entry-point mode (started by
``agentrl.envs.external.workers.WorkerPool``; standard library only, so it starts fast).

    python agent_worker.py MODULE:FUNCTION

It imports ``MODULE`` once (found from the working directory, as ``python -m`` would) and calls
``FUNCTION(task, base_url, api_key)`` for each rollout it is sent, one at a time. JSON lines:

    worker -> pool, once   {"ready": true}  or  {"fatal": "<why the entry point does not load>"}
    pool -> worker         {"id": rollout id, "task": {...}, "base_url": ..., "api_key": ...,
                            "env": {variable: value}}   (set in os.environ before the call)
    worker -> pool         {"id": ..., "reward": number or null}
                           or {"id": ..., "bad_reward": repr}  (the function returned a non-number)
                           or {"id": ..., "error": "<the traceback's last line> (file:line)"}

The end of its input ends it. The protocol has this process's stdout to itself: whatever the
agent prints goes to stderr (the worker's log), with the full traceback of every exception.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback


def load(spec: str):
    """The callable ``MODULE:FUNCTION`` names (``FUNCTION`` may be dotted: ``Class.method``)."""
    module, _, name = spec.partition(":")
    target = importlib.import_module(module)
    for part in name.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise TypeError(f"{name} is a {type(target).__name__}, not a function")
    return target


def describe(exc: BaseException, where: bool = True) -> str:
    """The traceback's last line, and (``where``) the innermost frame's file, line, function."""
    line = traceback.format_exception_only(type(exc), exc)[-1].strip()
    frames = traceback.extract_tb(exc.__traceback__)
    if where and frames:
        last = frames[-1]
        line += f" ({os.path.basename(last.filename)}:{last.lineno} in {last.name})"
    return line


def serve(fn, channel) -> None:
    while True:
        line = sys.stdin.readline()
        if not line:
            return
        msg = json.loads(line)
        os.environ.update(msg.get("env", {}))
        out: dict = {"id": msg["id"]}
        try:
            reward = fn(msg["task"], msg["base_url"], msg["api_key"])
        except BaseException as exc:  # SystemExit too: one rollout's failure, never the worker's
            traceback.print_exc()
            out["error"] = describe(exc)
        else:
            if reward is None or (
                isinstance(reward, (int, float)) and not isinstance(reward, bool)
            ):
                out["reward"] = None if reward is None else float(reward)
            else:
                out["bad_reward"] = repr(reward)[:200]
        sys.stderr.flush()
        channel.write(json.dumps(out) + "\n")
        channel.flush()


def main() -> int:
    # the agent's modules are found from the working directory (not this file's folder)
    sys.path[0] = os.getcwd()
    channel = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # the agent's prints go to the log, never into the protocol
    try:
        fn = load(sys.argv[1])
    except BaseException as exc:
        traceback.print_exc()
        channel.write(json.dumps({"fatal": describe(exc, where=False)}) + "\n")
        channel.flush()
        return 1
    channel.write(json.dumps({"ready": True}) + "\n")
    channel.flush()
    serve(fn, channel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
