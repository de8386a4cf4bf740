"""tooluse: questions about a warehouse answered with several tools, one JSON call a turn.

Tools (JSON function calling, see ``agentrl.envs.toolcalls``):

    calc(expression)                    the calculator: arithmetic
    lookup(item, field)                 the task's warehouse database: weight (kg), length (m),
                                        stock (count); generated from the task's catalog number
    convert(value, from, to)            unit conversion (mass, length, time)
    price(item)                         the price API, over real HTTP on 127.0.0.1 (see
                                        ``agentrl.envs.tooluse.price_service``): latency, HTTP 500s and
                                        timeouts are part of the environment

Task families, each needing two or three tools (the oracle's calls in brackets)::

    weight  How many g do 4 bolts weigh?          [lookup, calc, convert]
    length  How many cm long are 3 pipes laid end to end?   [lookup, calc, convert]
    value   What are all bolts in stock worth in USD?       [lookup, price, calc]
    cost    What do 4 bolts cost in USD?                    [price, calc]

A malformed action, an unknown tool or wrong arguments is an ``error: ...`` observation with
``info["invalid"] = True``; a tool failure the agent did not cause (HTTP 500, timeout, service
down) is an ``error: ...`` observation with ``info["tool_error"]`` naming the fault. The episode
goes on until an answer or the turn cap.

The oracle retries a price request it knows will fail (faults are a function of the request's
position, ``fault_at``). Its deliberate flaw: on weight and length tasks it skips the unit
converter with probability ``skip_convert_prob`` and answers in kg or m, which imitation copies
and outcome-based RL can undo.
"""

from __future__ import annotations

import random
from typing import Any

from agentrl.envs.base import (
    ERR_DONE,
    SPLITS,
    check_ints,
    check_numbers,
    check_probs,
    record_step,
    render_episode,
    split_tasks,
)
from agentrl.envs.toolcalls import (
    CALCULATOR,
    Action,
    ToolError,
    ToolSpec,
    answer_action,
    calculator,
    format_number,
    mistype,
    parse_action,
    tool_call,
    tool_response,
    unknown_tool,
)
from agentrl.envs.tooluse.price_service import PriceService, fault_at, fetch_price, price_of
from agentrl.types import Task

SYSTEM_PROMPT = (
    "Tools: calc(expression) lookup(item,field) convert(value,from,to) price(item). Call one a "
    'turn as <tool_call>{"name":..,"arguments":{..}}</tool_call>, then <answer>N</answer>.'
)
FAMILIES = ("weight", "length", "value", "cost")
ITEMS = (
    "bolt",
    "nut",
    "screw",
    "pipe",
    "plank",
    "brick",
    "cable",
    "hinge",
    "valve",
    "spring",
    "washer",
    "rivet",
)
FIELDS = {"weight": "kg", "length": "m", "stock": None}
# unit -> (dimension, size in the dimension's base unit)
UNITS = {
    "mg": ("mass", 1),
    "g": ("mass", 1000),
    "kg": ("mass", 1000_000),
    "t": ("mass", 1000_000_000),
    "mm": ("length", 1),
    "cm": ("length", 10),
    "m": ("length", 1000),
    "km": ("length", 1000_000),
    "s": ("time", 1),
    "min": ("time", 60),
    "h": ("time", 3600),
}
TOOLS = {
    "calc": CALCULATOR,
    "lookup": ToolSpec("lookup", {"item": "string", "field": "string"}),
    "convert": ToolSpec("convert", {"value": "number", "from": "string", "to": "string"}),
    "price": ToolSpec("price", {"item": "string"}),
}
# (family, prompt template, field of the lookup, unit asked for)
_TEMPLATES = {
    "weight": ("How many g do {n} {item}s weigh?", "weight", "g"),
    "length": ("How many cm long are {n} {item}s laid end to end?", "length", "cm"),
    "value": ("What are all {item}s in stock worth in USD?", "stock", None),
    "cost": ("What do {n} {item}s cost in USD?", None, None),
}


def database(seed: int, catalog: int) -> dict[str, dict[str, int]]:
    """The warehouse database of ``catalog``: per item, weight (kg), length (m) and stock."""
    rng = random.Random(f"db/{seed}/{catalog}")
    return {
        item: {
            "weight": rng.randint(1, 9),
            "length": rng.randint(1, 9),
            "stock": rng.randint(2, 30),
        }
        for item in ITEMS
    }


def convert(value: int | float, src: str, dst: str) -> int | float:
    """``value`` in unit ``src`` expressed in ``dst``; raises ToolError for unknown units or
    different dimensions."""
    for unit in (src, dst):
        if unit not in UNITS:
            raise ToolError(f"convert: unknown unit {unit!r}; units: {', '.join(UNITS)}")
    (dim_a, size_a), (dim_b, size_b) = UNITS[src], UNITS[dst]
    if dim_a != dim_b:
        raise ToolError(f"convert: cannot convert {dim_a} ({src}) to {dim_b} ({dst})")
    out = value * size_a / size_b
    return int(out) if float(out).is_integer() else round(out, 6)


class ToolUseEnv:
    """One episode. ``service`` is the suite's PriceService (shared by all its episodes)."""

    def __init__(self, suite: ToolUse):
        self.suite = suite
        self.system_prompt = suite.system_prompt
        self.max_turns = suite.max_turns
        self.task: Task | None = None
        self.db: dict[str, dict[str, int]] = {}
        self.history: list[tuple[str, str, float]] = []
        self.done = self.truncated = False
        self.final_answer: str | None = None
        self.service_calls = 0

    def reset(self, task: Task) -> str:
        self.task = task
        self.db = database(self.suite.seed, task.meta["catalog"])
        self.history = []
        self.done = self.truncated = False
        self.final_answer = None
        self.service_calls = 0
        return task.prompt

    def step(self, action: str) -> tuple[str, float, bool, dict[str, Any]]:
        if self.task is None:
            raise RuntimeError("ToolUseEnv.step called before reset(task)")
        if self.done:
            return ERR_DONE, 0.0, True, self._info(None, invalid=True, error=ERR_DONE)
        obs, reward, info = self._apply(parse_action(action))
        return record_step(self, action, obs, reward, info)

    def _apply(self, act: Action) -> tuple[str, float, dict[str, Any]]:
        if act.error is not None:
            return act.error, 0.0, self._info(act.name, invalid=True, error=act.error)
        if act.kind == "answer":
            self.done = True
            self.final_answer = act.text
            reward = 1.0 if self.suite.correct(self.task, act.text) else 0.0
            return "", reward, self._info("answer")
        spec = TOOLS.get(act.name)
        if spec is None:
            err = unknown_tool(act.name, TOOLS)
            return err, 0.0, self._info(act.name, invalid=True, error=err)
        err = spec.check(act.arguments)
        if err is not None:
            return err, 0.0, self._info(act.name, invalid=True, error=err)
        try:
            payload = self._call(act.name, act.arguments)
        except ToolError as exc:
            msg = f"error: {exc}"
            return msg, 0.0, self._info(act.name, error=msg, tool_error=exc.kind)
        return tool_response(payload), 0.0, self._info(act.name)

    def _call(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        if name == "calc":
            return {"result": calculator(args["expression"])}
        if name == "convert":
            return {"value": convert(args["value"], args["from"], args["to"]), "unit": args["to"]}
        if name == "lookup":
            record = self.db.get(args["item"])
            if record is None:
                raise ToolError(f"lookup: no item {args['item']!r}")
            if args["field"] not in FIELDS:
                raise ToolError(f"lookup: no field {args['field']!r}; fields: {', '.join(FIELDS)}")
            unit = FIELDS[args["field"]]
            value = record[args["field"]]
            return {"value": value, "unit": unit} if unit else {"value": value}
        seq = self.service_calls
        self.service_calls += 1
        url = self.suite.service_url()
        price = fetch_price(url, args["item"], self.task.meta["catalog"], seq, self.suite.timeout_s)
        return {"price": price, "currency": "USD"}

    def _info(self, tool, invalid=False, error=None, tool_error=None) -> dict[str, Any]:
        return {
            "tool": tool,
            "invalid": invalid,
            "error": error,
            "tool_error": tool_error,
            "truncated": self.truncated,
            "turn": len(self.history),
        }

    def render(self) -> str:
        return render_episode(self, self._verdict)

    def _verdict(self) -> str:
        verdict = "correct" if self.suite.correct(self.task, self.final_answer) else "wrong"
        return f"[answer {self.final_answer}: {verdict}, expected {self.task.answer}]"


class ToolUse:
    """The tooluse suite: tasks, the price service's lifetime, episode envs, oracle, verifier.

    Args:
        seed: seed of the tasks, the databases, the prices and the service's faults.
        num_train, num_val, num_test: split sizes (every task has its own catalog number).
        families: the task families drawn from (see the module docstring).
        max_quantity: quantities in questions are drawn from 2..max_quantity.
        max_turns: turns per episode (tool calls, malformed actions and the answer all count).
        max_action_tokens: tokens the policy may generate in one turn.
        latency_s: every price-API response waits this long.
        error_rate: fraction of price requests answered with HTTP 500.
        timeout_rate: fraction of price requests held back past the client's timeout.
        timeout_s: the client's timeout on a price request.
        restart_service: a service found dead when an episode starts is restarted (counted in
            ``env/service_restarts_total``); false leaves it down (every price call then fails).
        skip_convert_prob: probability that the demonstrator skips the unit converter on a weight
            or length task and answers in kg or m (the oracle's deliberate flaw).
        mistake_prob: probability that a demonstration ends with a mistyped answer.
        system_prompt: the system message of every episode.
    """

    name = "tooluse"
    stop_strings = ["</tool_call>", "</answer>"]

    def __init__(
        self,
        seed: int = 0,
        num_train: int = 5000,
        num_val: int = 200,
        num_test: int = 200,
        families: tuple[str, ...] | list[str] = FAMILIES,
        max_quantity: int = 9,
        max_turns: int = 8,
        max_action_tokens: int = 80,
        latency_s: float = 0.0,
        error_rate: float = 0.1,
        timeout_rate: float = 0.02,
        timeout_s: float = 0.3,
        restart_service: bool = True,
        system_prompt: str = SYSTEM_PROMPT,
        skip_convert_prob: float = 0.0,
        mistake_prob: float = 0.0,
    ):
        _check_args(locals())
        self.seed = seed
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.families = tuple(families)
        self.max_quantity = max_quantity
        self.max_turns = max_turns
        self.max_action_tokens = max_action_tokens
        self.timeout_s = float(timeout_s)
        self.restart_service = bool(restart_service)
        self.skip_convert_prob = float(skip_convert_prob)
        self.mistake_prob = float(mistake_prob)
        self.system_prompt = system_prompt
        self.stop_strings = list(type(self).stop_strings)
        self.service = PriceService(
            seed, list(ITEMS), latency_s, error_rate, timeout_rate, hang_s=4 * self.timeout_s + 1
        )
        self.service_starts = 0
        self._splits = self._generate()

    # ---------------------------------------------------------------- lifetime
    def service_url(self) -> str:
        """The running service's URL (raises ToolError "unreachable" when it is down)."""
        if not self.service.alive:
            raise ToolError("price: the price service is unreachable (not running)", "unreachable")
        return self.service.url

    def make(self) -> ToolUseEnv:
        """A fresh episode env; starts the price service first (again, if it died)."""
        if not self.service.alive and (self.service_starts == 0 or self.restart_service):
            self.service.start()
            self.service_starts += 1
        return ToolUseEnv(self)

    def close(self) -> None:
        """Stop the price service (idempotent; also runs at interpreter exit)."""
        self.service.stop()

    def __enter__(self) -> ToolUse:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------- contract
    def tasks(self, split: str) -> list[Task]:
        return split_tasks(self._splits, split)

    def correct(self, task: Task, answer: str | None) -> bool:
        return answer is not None and answer.strip() == str(task.answer)

    def verify(self, task: Task, env: ToolUseEnv) -> bool:
        return bool(getattr(env, "done", False)) and self.correct(task, env.final_answer)

    def oracle(self, task: Task, rng: random.Random) -> list[str]:
        """A demonstration: the calls in order (a failing price request is retried), the answer."""
        m = task.meta
        item, n, family = m["item"], m.get("n"), m["family"]
        db = database(self.seed, m["catalog"])
        acts: list[str] = []
        if family in ("weight", "length"):
            field = _TEMPLATES[family][1]
            total = n * db[item][field]
            acts += [tool_call("lookup", item=item, field=field)]
            acts += [tool_call("calc", expression=f"{n}*{db[item][field]}")]
            if rng.random() < self.skip_convert_prob:
                return acts + [answer_action(total)]
            acts += [
                tool_call("convert", **{"value": total, "from": FIELDS[field], "to": m["unit"]})
            ]
        elif family == "value":
            acts += [tool_call("lookup", item=item, field="stock")]
            acts += self._price_calls(task, item)
            acts += [tool_call("calc", expression=f"{db[item]['stock']}*{m['price']}")]
        else:
            acts += self._price_calls(task, item)
            acts += [tool_call("calc", expression=f"{n}*{m['price']}")]
        answer = task.answer
        if rng.random() < self.mistake_prob:
            answer = mistype(int(answer), rng)
        return acts + [answer_action(answer)]

    def _price_calls(self, task: Task, item: str) -> list[str]:
        calls, seq = [], 0
        s = self.service.settings
        while True:
            calls.append(tool_call("price", item=item))
            if fault_at(self.seed, task.meta["catalog"], seq, s.error_rate, s.timeout_rate) == "ok":
                return calls
            seq += 1

    def metrics(self, trajectories) -> dict[str, float]:
        """Tool faults of a batch of episodes (counts), logged under ``env/``."""
        kinds = [t.info.get("tool_error") for tr in trajectories for t in tr.turns]
        out = {
            f"env/tool_errors_{k}": float(kinds.count(k))
            for k in ("http", "timeout", "unreachable", "tool")
        }
        out["env/service_restarts_total"] = float(max(self.service_starts - 1, 0))
        return out

    # ---------------------------------------------------------------- tasks
    def _generate(self) -> dict[str, list[Task]]:
        rng = random.Random(f"tasks/{self.seed}")
        total = sum(self.sizes.values())
        catalogs = rng.sample(range(10**7), total)
        splits, k = {}, 0
        for split in SPLITS:
            splits[split] = []
            for i in range(self.sizes[split]):
                splits[split].append(self._make_task(split, i, catalogs[k], rng))
                k += 1
        return splits

    def _make_task(self, split: str, i: int, catalog: int, rng: random.Random) -> Task:
        family = rng.choice(self.families)
        item = rng.choice(ITEMS)
        n = rng.randint(2, self.max_quantity)
        template, field, unit = _TEMPLATES[family]
        db = database(self.seed, catalog)[item]
        price = price_of(self.seed, catalog, item)
        if family in ("weight", "length"):
            answer = convert(n * db[field], FIELDS[field], unit)
        elif family == "value":
            answer = db["stock"] * price
        else:
            answer = n * price
        meta = {"family": family, "item": item, "catalog": catalog, "unit": unit, "price": price}
        if family != "value":
            meta["n"] = n
        return Task(
            id=f"tooluse/{split}/{i}",
            prompt=template.format(n=n, item=item),
            answer=format_number(answer),
            meta=meta,
        )


def _check_args(args: dict[str, Any]) -> None:
    check_ints(args, ("num_train", "num_val", "num_test", "max_turns", "max_action_tokens"))
    if not isinstance(args["max_quantity"], int) or args["max_quantity"] < 2:
        raise ValueError(f"max_quantity must be an int >= 2, got {args['max_quantity']!r}")
    bad = [f for f in args["families"] if f not in FAMILIES]
    if bad or not args["families"]:
        raise ValueError(
            f"families must be a non-empty subset of {list(FAMILIES)}, got {list(args['families'])}"
        )
    check_probs(args, ("error_rate", "timeout_rate", "skip_convert_prob", "mistake_prob"))
    if args["error_rate"] + args["timeout_rate"] >= 1.0:
        raise ValueError("error_rate + timeout_rate must be < 1 (else no request ever succeeds)")
    check_numbers(args, ("latency_s", "timeout_s"))
    if args["timeout_s"] <= 0:
        raise ValueError(f"timeout_s must be > 0, got {args['timeout_s']!r}")
