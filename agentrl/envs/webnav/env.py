"""webnav episodes: an agent browsing the shop over HTTP, one action a turn.

The episode env keeps what a browser tab keeps (the current page, the back stack, the values typed
into fields) and asks its driver to fetch pages: ``HttpDriver`` (the text backend: urllib + lxml,
no JavaScript) or ``BrowserDriver`` (headless Chromium; see browser.py). Both render the page's
HTML the same way (render.py). Infrastructure failures (the site or the browser not answering)
raise ``SiteError``: the episode is then marked failed and counted by the training loop, while
anything the agent writes gets an observation.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlencode, urlsplit

import lxml.html

from agentrl.envs.base import ERR_DONE, record_step, render_episode
from agentrl.envs.webnav import actions as A
from agentrl.envs.webnav.render import Element, Page, parse
from agentrl.types import Task

SYSTEM_PROMPT = 'Act: click [n], type [n] "text", submit, back, answer "text", finish.'


class SiteError(RuntimeError):
    """The site (or the browser) did not answer: not the agent's fault."""


def normalize_answer(text: str | None) -> str:
    return re.sub(r"[\s$]", "", (text or "").lower())


def check_outcome(task: Task, answer: str | None, finished: bool, orders: list) -> bool:
    """The verifier: a price goal needs the right answer; a purchase goal a finished episode whose
    only order holds exactly the target item, for the right name."""
    if task.meta["goal"] == "price":
        return answer is not None and normalize_answer(answer) == normalize_answer(task.answer)
    if not finished or len(orders) != 1:
        return False
    order = orders[0]
    target = task.meta["item"]["id"]
    same_name = order.name.lower() == task.meta["customer"].lower()
    return [it.id for it in order.items] == [target] and same_name


class HttpDriver:
    """The text backend: pages fetched with urllib (never through a proxy), parsed with lxml."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def load(self, url: str) -> Page:
        return self._request("GET", url, None)

    def follow(self, page: Page, el: Element) -> Page:
        return self.load(el.href)

    def submit(self, page: Page, form, submitter: Element | None) -> Page:
        extra = {}
        if submitter is not None and submitter.node.get("name"):
            extra[submitter.node.get("name")] = submitter.node.get("value") or ""
        return lxml.html.submit_form(form, extra_values=extra, open_http=self._open_form)

    def _open_form(self, method: str, url: str, values) -> Page:
        data = urlencode(list(values))
        if method.upper() == "GET":
            return self._request("GET", f"{url.split('?')[0]}?{data}", None)
        return self._request("POST", url, data.encode())

    def _request(self, method: str, url: str, body: bytes | None) -> Page:
        req = urllib.request.Request(url, data=body, method=method)
        try:
            with self.opener.open(req, timeout=self.timeout) as resp:
                return parse(resp.read().decode("utf-8", "replace"), resp.geturl(), resp.status)
        except urllib.error.HTTPError as exc:  # a 404 page is still a page
            with exc:
                return parse(exc.read().decode("utf-8", "replace"), exc.geturl(), exc.code)
        except (urllib.error.URLError, OSError) as exc:
            raise SiteError(f"the site did not answer {method} {url}: {exc}") from exc

    def close(self) -> None:
        pass


class WebNavEnv:
    """One webnav episode: ``reset(task)``, then ``step(action)`` until done.

    start: (task -> (session id, home URL)), given by the suite; orders: (session id -> orders).
    """

    def __init__(
        self,
        driver,
        start,
        orders,
        system_prompt: str = SYSTEM_PROMPT,
        max_turns: int = 10,
        step_penalty: float = 0.0,
    ):
        self.driver = driver
        self._start = start
        self._orders = orders
        self.system_prompt = system_prompt
        self.max_turns = max_turns
        self.step_penalty = step_penalty
        self.task: Task | None = None
        self.page: Page | None = None

    def reset(self, task: Task) -> str:
        """Start an episode on ``task`` at the site's home page; returns the goal and the page."""
        self.task = task
        self.history: list[tuple[str, str, float]] = []
        self.back_stack: list[str] = []
        self.typed: Element | None = None
        self.done = self.truncated = self.finished = False
        self.final_answer: str | None = None
        self.sid, home = self._start(task)
        self.origin = urlsplit(home).netloc
        self.page = self.driver.load(home)
        return f"{task.prompt}\n{self.page.text}"

    def orders(self) -> list:
        return self._orders(self.sid) if self.task is not None else []

    def succeeded(self) -> bool:
        return check_outcome(self.task, self.final_answer, self.finished, self.orders())

    def step(self, action: str) -> tuple[str, float, bool, dict[str, Any]]:
        """Apply one action; returns ``(observation, reward, done, info)``. Raises SiteError only
        when the site itself fails."""
        if self.task is None:
            raise RuntimeError("WebNavEnv.step called before reset(task)")
        if self.done:
            return ERR_DONE, 0.0, True, self._info(None, ERR_DONE)
        parsed = A.parse_action(action)
        obs, info = self._apply(parsed)
        reward = (float(self.succeeded()) if self.done else 0.0) - self.step_penalty
        return record_step(self, action, obs, reward, info)

    def _apply(self, act: A.Action) -> tuple[str, dict[str, Any]]:
        if act.error is not None:
            return act.error, self._info(None, act.error)
        if act.verb in ("answer", "finish"):
            self.done = True
            self.finished = act.verb == "finish"
            self.final_answer = act.text
            return "", self._info(act.verb)
        if act.verb == "back":
            if not self.back_stack:
                return self._error("back", "error: no page to go back to")
            self.page, self.typed = self.driver.load(self.back_stack.pop()), None
            return self.page.text, self._info("back")
        if act.verb == "submit":
            return self._submit()
        el = self.page.element(act.n)
        if el is None:
            n = len(self.page.elements)
            return self._error(act.verb, f"error: no element [{act.n}] on this page (1-{n})")
        if act.verb == "type":
            if el.kind != "field":
                return self._error("type", f"error: [{act.n}] is not a text field")
            el.node.set("value", act.text)
            self.page.rerender()
            self.typed = el
            return el.line(), self._info("type")
        return self._click(el)

    def _click(self, el: Element) -> tuple[str, dict[str, Any]]:
        if el.kind == "field":
            return self._error("click", f'error: [{el.n}] is a text field; type [{el.n}] "text"')
        if el.kind == "link":
            if urlsplit(el.href).netloc != self.origin:
                return self._error("click", f"error: [{el.n}] leads off the site")
            return self._go(self.driver.follow(self.page, el), "click")
        if el.form is None:
            return self._error("click", f"error: [{el.n}] does nothing here")
        return self._go(self.driver.submit(self.page, el.form, el), "click")

    def _submit(self) -> tuple[str, dict[str, Any]]:
        form = self.typed.form if self.typed is not None else None
        if form is None:
            forms = {
                id(f): f
                for e in self.page.elements
                if e.kind == "field" and (f := e.form) is not None
            }
            form = next(iter(forms.values())) if len(forms) == 1 else None
        if form is None:
            return self._error("submit", "error: nothing to submit; type into a field first")
        return self._go(self.driver.submit(self.page, form, None), "submit")

    def _go(self, page: Page, tool: str) -> tuple[str, dict[str, Any]]:
        self.back_stack.append(self.page.url)
        self.page, self.typed = page, None
        return page.text, self._info(tool)

    def _error(self, tool: str, message: str) -> tuple[str, dict[str, Any]]:
        return message, self._info(tool, message)

    def _info(self, tool: str | None, error: str | None = None) -> dict[str, Any]:
        return {
            "tool": tool,
            "invalid": error is not None,
            "truncated": self.truncated,
            "error": error,
            "answer": self.final_answer,
            "url": self.page.url if self.page is not None else None,
            "turn": len(self.history),
        }

    def render(self) -> str:
        """A readable transcript of the episode so far."""
        return render_episode(self, self._verdict, reward_format="{:g}", indent_observations=True)

    def _verdict(self) -> str:
        return f"[{'success' if self.succeeded() else 'failure'}; expected {self.task.answer}]"
