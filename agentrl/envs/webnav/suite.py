"""The webnav env suite: seeded tasks over generated shops, a real HTTP server, two backends.

A task is a site seed plus a goal about one of its items::

    Find the price of the red wool hat, size M.      -> answer "$23"
    Buy the red wool hat, size M, for Ann.           -> add it to the cart, check out as Ann, finish

Splits are disjoint by site: the held-out tasks are on sites never seen in training. The suite
starts its server (and, for ``backend=browser``, Chromium) on first use and releases them in
``close()``; it is a context manager, and the training loop closes it on every exit path.
"""

from __future__ import annotations

import logging
import random
import weakref
from typing import Any

from agentrl.envs.base import SPLITS, check_ints, check_probs, split_tasks
from agentrl.envs.webnav import actions as A
from agentrl.envs.webnav.env import SYSTEM_PROMPT, HttpDriver, WebNavEnv, check_outcome
from agentrl.envs.webnav.server import ShopServer
from agentrl.envs.webnav.shop import generate_site, plural
from agentrl.types import Task

log = logging.getLogger(__name__)
BACKENDS = ("text", "browser")
NAMES = ("Ann", "Bob", "Eve", "Kim", "Lee", "Max", "Sam", "Zoe", "Ray", "Ida", "Tom", "Liv")


class WebNav:
    """Args:
    seed: seed of the task generator (fixes the splits and every site).
    num_train, num_val, num_test: split sizes (one site per task; splits never share a site).
    backend: "text" (urllib + lxml, no JavaScript) or "browser" (headless Chromium over CDP).
    num_categories: kinds of goods per site. page_size: items per listing page.
    buy_prob: fraction of purchase goals (the rest are price goals).
    max_turns: turns per episode. max_action_tokens: tokens the policy may generate in one turn.
    max_seq_len: tokens one episode may take (``rollout.max_seq_len`` reads it from the config).
    step_penalty: subtracted from every step's reward (the final step adds 1 on success).
    guess_prob: probability that the demonstrator clicks the first listed item of the right name
        without checking its size: a systematic flaw that imitation copies and RL can undo.
    mistake_prob: probability that one demonstration ends with a wrong answer or a wrong name.
    browse_prob: probability that the demonstrator browses the category pages (following "next")
        instead of searching.
    size_query_prob: probability that a demonstrator who is not guessing searches for the item's
        name and size in the goal's own words ("red wool hat, size M", which lists that one item)
        rather than its name alone.
    fix_prob: probability that a guessing demonstrator who lands on an item of the wrong size
        (the item page says "size L", the goal "size M") goes back and clicks the right one; the
        rest of the time it carries on with the wrong item. The check that RL can make a habit of.
    kind_query_prob: probability that a searching demonstrator types only the kind of goods
        ("belt", not "white linen belt") and clicks the first item listed, whatever its name and
        size: a lazy search, right only when the wanted item happens to come first, that RL can
        replace with the item's full name (a choice the tiny model can make: it copies names).
    http_timeout: seconds an HTTP request (or a page load in the browser) may take.
    chromium: the Chromium executable of the browser backend (a name on PATH, or a path).
    """

    name = "webnav"
    stop_strings: list[str] = []

    def __init__(
        self,
        seed: int = 0,
        num_train: int = 5000,
        num_val: int = 200,
        num_test: int = 200,
        backend: str = "text",
        num_categories: int = 4,
        page_size: int = 4,
        buy_prob: float = 0.5,
        max_turns: int = 10,
        max_action_tokens: int = 32,
        max_seq_len: int = 1024,
        step_penalty: float = 0.0,
        guess_prob: float = 0.0,
        mistake_prob: float = 0.0,
        browse_prob: float = 0.0,
        size_query_prob: float = 0.0,
        fix_prob: float = 0.0,
        kind_query_prob: float = 0.0,
        http_timeout: float = 10.0,
        chromium: str = "chromium",
    ):
        _check_args(locals())
        self.seed = seed
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.backend = backend
        self.num_categories = num_categories
        self.page_size = page_size
        self.buy_prob = float(buy_prob)
        self.max_turns = max_turns
        self.max_action_tokens = max_action_tokens
        self.max_seq_len = max_seq_len
        self.step_penalty = float(step_penalty)
        self.guess_prob = float(guess_prob)
        self.mistake_prob = float(mistake_prob)
        self.browse_prob = float(browse_prob)
        self.size_query_prob = float(size_query_prob)
        self.fix_prob = float(fix_prob)
        self.kind_query_prob = float(kind_query_prob)
        self.http_timeout = float(http_timeout)
        self.chromium = chromium
        self.system_prompt = SYSTEM_PROMPT
        self.stop_strings = []
        self._splits = self._generate()
        self._server: ShopServer | None = None
        self._browser = None
        # what is running; a safety net releases it if the suite is garbage-collected unclosed
        self._live: list = []
        weakref.finalize(self, _release, self._live)

    # ------------------------------------------------------------------ resources
    @property
    def server(self) -> ShopServer:
        """The running shop server (started, or restarted if it died, on first use)."""
        if self._server is None:
            self._server = ShopServer(self.page_size, num_categories=self.num_categories)
        if not self._server.running:
            self._server.start()
            self._live.append(self._server)
        return self._server

    def browser(self):
        """The running Chromium of the browser backend (started, or restarted, on first use)."""
        from agentrl.envs.webnav.browser import Chromium

        if self._browser is None or not self._browser.alive:
            if self._browser is not None:
                self._browser.close()
            self._browser = Chromium(self.chromium, timeout=self.http_timeout)
            self._live.append(self._browser)
            self._browser.start()
        return self._browser

    def close(self) -> None:
        """Stop the server and the browser (idempotent; a later make() starts them again)."""
        browser, server = self._browser, self._server
        self._browser = None
        self._server = None
        try:
            if browser is not None:
                browser.close()
        finally:
            if server is not None:
                server.close()
            self._live.clear()

    def __enter__(self) -> WebNav:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ the Env contract
    def tasks(self, split: str) -> list[Task]:
        """The tasks of ``split`` ("train", "val" or "test"), identical for a given seed."""
        return split_tasks(self._splits, split)

    def make(self, backend: str | None = None) -> WebNavEnv:
        """A fresh episode env (on the suite's backend unless ``backend`` is given)."""
        backend = backend or self.backend
        if backend == "browser":
            from agentrl.envs.webnav.browser import BrowserDriver

            driver = BrowserDriver(self.browser())
        else:
            driver = HttpDriver(self.http_timeout)
        return WebNavEnv(
            driver,
            self._start_session,
            self._orders,
            self.system_prompt,
            self.max_turns,
            self.step_penalty,
        )

    def _start_session(self, task: Task) -> tuple[str, str]:
        server = self.server
        sid = server.new_session(task.meta["site_seed"])
        return sid, server.url(sid)

    def _orders(self, sid: str) -> list:
        sess = self._server.session(sid) if self._server is not None else None
        return list(sess.orders) if sess is not None else []

    def verify(self, task: Task, env: WebNavEnv) -> bool:
        """Whether the finished episode ``env`` achieved ``task``'s goal (the env's reward and
        evaluation both call ``check_outcome``)."""
        if not getattr(env, "done", False) or getattr(env, "task", None) is None:
            return False
        return check_outcome(task, env.final_answer, env.finished, env.orders())

    def oracle(self, task: Task, rng: random.Random) -> list[str]:
        """A demonstration: the actions of a shopper reading the pages (text backend).

        With ``guess_prob`` it takes the first listed item of the right name whatever its size
        (and with ``fix_prob``, seeing the wrong size on its page, goes back for the right one);
        with ``mistake_prob`` it ends with a mistyped price or name. Deterministic given ``rng``.
        """
        return _Demonstrator(self, task, rng).run()

    def _generate(self) -> dict[str, list[Task]]:
        rng = random.Random(self.seed)
        total = sum(self.sizes.values())
        seeds = rng.sample(range(1, 2**31), total)
        splits, start = {}, 0
        for split in ("test", "val", "train"):
            chunk = seeds[start : start + self.sizes[split]]
            splits[split] = [self._make_task(split, i, s, rng) for i, s in enumerate(chunk)]
            start += self.sizes[split]
        return {s: splits[s] for s in SPLITS}

    def _make_task(self, split: str, i: int, site_seed: int, rng: random.Random) -> Task:
        site = generate_site(site_seed, self.num_categories)
        item = rng.choice(site.items)
        meta: dict[str, Any] = {
            "site_seed": site_seed,
            "item": {"id": item.id, "name": item.name, "size": item.size, "kind": item.kind},
        }
        what = f"the {item.name}, size {item.size}"
        if rng.random() < self.buy_prob:
            customer = rng.choice(NAMES)
            meta.update(goal="buy", customer=customer)
            prompt, answer = f"Buy {what}, for {customer}.", f"order of {item.id} for {customer}"
        else:
            meta.update(goal="price", customer=None)
            prompt, answer = f"Find the price of {what}.", f"${item.price}"
        return Task(id=f"webnav/{split}/{i}", prompt=prompt, answer=answer, meta=meta)


def _release(resources: list) -> None:
    for r in list(resources):
        try:
            r.close()
        except Exception as exc:  # a finalizer must not raise
            log.warning("webnav: releasing %r failed: %r", r, exc)


class _Demonstrator:
    """Plays one oracle episode in a text-backend env, choosing elements by their labels."""

    def __init__(self, suite: WebNav, task: Task, rng: random.Random):
        self.suite, self.task, self.rng = suite, task, rng
        self.item = task.meta["item"]
        self.actions: list[str] = []
        self.guess = rng.random() < suite.guess_prob
        self.mistake = rng.random() < suite.mistake_prob
        self.browse = rng.random() < suite.browse_prob
        # no draw when the option is off, so the default demonstrations stay what they were
        self.size_query = (
            suite.size_query_prob > 0 and not self.guess and rng.random() < suite.size_query_prob
        )
        # likewise: drawn only when the option is on and the demonstrator guesses
        self.fix = suite.fix_prob > 0 and self.guess and rng.random() < suite.fix_prob
        # likewise: drawn only when the option is on and the demonstrator searches
        self.kind_query = (
            suite.kind_query_prob > 0 and not self.browse and rng.random() < suite.kind_query_prob
        )
        # a lazy searcher does not check what it clicked
        self.fix = self.fix and not self.kind_query

    def act(self, action: str) -> None:
        self.actions.append(action)
        self.env.step(action)

    def run(self) -> list[str]:
        self.env = self.suite.make(backend="text")
        # the demonstrator plays to the end; a replay under the suite's turn cap may truncate it
        self.env.max_turns = 1000
        self.env.reset(self.task)
        self._find_item()
        if self.task.meta["goal"] == "price":
            price = next(
                ln.split()[-1] for ln in self.env.page.text.splitlines() if ln.startswith("price ")
            )
            if self.mistake:
                price = "$" + str(int(price[1:]) + self.rng.choice([-10, -1, 1, 10]))
            self.act(A.answer(price))
            return self.actions
        self.act(A.click(self.env.page.find("button", "Add to cart").n))
        self.act(A.click(self.env.page.find("link", "Checkout").n))
        name = self.task.meta["customer"]
        if self.mistake:
            name = self.rng.choice([n for n in NAMES if n != name])
        self.act(A.type_(self.env.page.find("field", "name").n, name))
        self.act("submit")
        self.act("finish")
        return self.actions

    def _find_item(self) -> None:
        """Reach the target's item page: by search (or by browsing the category)."""
        name, label = self.item["name"], f"{self.item['name']}, {self.item['size']}"
        if self.browse:
            self.act(A.click(self.env.page.find("link", plural(self.item["kind"])).n))
        else:
            # the size query copies the goal's words ("..., size M"), not the listing's ("..., M")
            query = f"{name}, size {self.item['size']}" if self.size_query else name
            if self.kind_query:
                query = self.item["kind"]
            self.act(A.type_(self.env.page.find("field", "search").n, query))
            self.act("submit")
        for _ in range(50):
            links = [e for e in self.env.page.elements if e.kind == "link"]
            named = [e for e in links if e.label.startswith(name + ",")]
            if self.kind_query:
                # the first listed item of that kind, whichever it is
                kind = f" {self.item['kind']},"
                pick = next((e for e in links if kind in e.label), None)
            elif self.guess and named:
                pick = named[0]
            else:
                pick = next((e for e in links if e.label == label), None)
            if pick is not None:
                self.act(A.click(pick.n))
                if not (self.fix and pick.label != label):
                    return
                # the item page shows the wrong size: back to the listing, look for the right one
                self.act("back")
                self.guess = False
                continue
            self.act(A.click(self.env.page.find("link", "next").n))
        raise RuntimeError(f"oracle: {label} not found on the site of {self.task.id}")


def _check_args(args: dict[str, Any]) -> None:
    check_ints(
        args, ("num_train", "num_val", "num_test", "max_action_tokens", "page_size", "max_seq_len")
    )
    if not isinstance(args["max_turns"], int) or args["max_turns"] < 1:
        raise ValueError(f"max_turns must be >= 1, got {args['max_turns']!r}")
    if not isinstance(args["num_categories"], int) or not 1 <= args["num_categories"] <= 10:
        raise ValueError(
            f"num_categories must be an int in [1, 10], got {args['num_categories']!r}"
        )
    if args["backend"] not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {args['backend']!r}")
    check_probs(
        args,
        (
            "buy_prob",
            "guess_prob",
            "mistake_prob",
            "browse_prob",
            "size_query_prob",
            "fix_prob",
            "kind_query_prob",
        ),
    )
    if not args["http_timeout"] > 0:
        raise ValueError(f"http_timeout must be > 0, got {args['http_timeout']!r}")
    if args["step_penalty"] < 0:
        raise ValueError(f"step_penalty must be >= 0, got {args['step_penalty']!r}")
