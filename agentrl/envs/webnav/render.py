"""HTML -> a compact text page with numbered interactive elements, through lxml's HTML parser.

Every backend renders the same way: the text backend renders the HTML the server sent, the browser
backend the DOM's HTML after scripts ran. The rendering walks the parsed tree in document order:

    Search: red wool hat            <- headings, paragraphs, list items, table rows: one line each
    [1] Home [2] Cart (0)           <- links and buttons: [n] and their text
    [3] search="" [4] Go            <- text fields: [n] placeholder="value"
    [5] red wool hat, M

Scripts, styles, ``<head>``, ``<noscript>``, ``hidden`` elements and hidden inputs are not shown.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import lxml.html
from lxml import etree

BLOCK = {
    "address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt", "fieldset",
    "figure", "footer", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li", "main",
    "nav", "ol", "p", "pre", "section", "table", "tbody", "thead", "tfoot", "tr", "ul",
}  # fmt: skip
SKIP = {"script", "style", "head", "template", "noscript", "title", "meta", "link", "svg"}
CELLS = {"td", "th"}
FIELD_TYPES = {"text", "search", "email", "number", "tel", "url", "password", ""}
BUTTON_TYPES = {"submit", "button", "reset", "image"}
# the attribute the browser backend stamps on DOM elements so that a rendered element can be
# found again in the live page (its value is the element's index among MARKED)
MARK = "data-agentrl-i"
MARKED = "a, button, input, textarea"


@dataclass
class Element:
    """An interactive element of a page.

    n: its number on the page (1-based). kind: "link", "button" or "field". label: the text shown.
    href: a link's absolute URL. node: the lxml element (forms are found from it).
    mark: the browser backend's DOM index (MARK attribute), None for the text backend.
    """

    n: int
    kind: str
    label: str
    node: etree._Element = field(repr=False)
    href: str | None = None
    mark: int | None = None

    @property
    def form(self):
        return next(self.node.iterancestors("form"), None)

    def line(self) -> str:
        if self.kind == "field":
            return f'[{self.n}] {self.label}="{self.node.get("value") or ""}"'
        return f"[{self.n}] {self.label}"


@dataclass
class Page:
    """A rendered page: its URL, its text, its elements (element n is ``elements[n - 1]``)."""

    url: str
    text: str
    elements: list[Element]
    doc: etree._Element = field(repr=False)
    status: int = 200
    # the browser backend's number of this snapshot (which page the shared tab shows)
    token: int | None = None

    def element(self, n: int) -> Element | None:
        return self.elements[n - 1] if 1 <= n <= len(self.elements) else None

    def find(self, kind: str, label: str) -> Element | None:
        """The first element of ``kind`` whose label is ``label`` (the oracle's lookup)."""
        return next((e for e in self.elements if e.kind == kind and e.label == label), None)

    def rerender(self) -> None:
        """Refresh ``text`` after a field's value changed."""
        self.text = _Walker().run(self.doc, self.url)[0]


def parse(html: str, url: str, status: int = 200) -> Page:
    """Parse ``html`` (served from ``url``) and render it."""
    doc = lxml.html.document_fromstring(html or "<html><body></body></html>", base_url=url)
    text, elements = _Walker().run(doc, url)
    return Page(url, text, elements, doc, status)


def _words(text: str | None) -> str:
    return " ".join((text or "").split())


class _Walker:
    def __init__(self):
        self.lines: list[str] = []
        self.parts: list[str] = []
        self.elements: list[Element] = []

    def run(self, doc, url: str) -> tuple[str, list[Element]]:
        self.url = url
        self._walk(doc)
        self._newline()
        return "\n".join(self.lines), self.elements

    def _newline(self) -> None:
        line = _words(" ".join(self.parts))
        if line:
            self.lines.append(line)
        self.parts = []

    def _walk(self, el) -> None:
        if not isinstance(el.tag, str):  # comments and processing instructions
            return
        tag = el.tag.lower()
        if tag in SKIP or el.get("hidden") is not None:
            return
        element = self._interactive(el, tag)
        if element is not None:
            self.elements.append(element)
            self.parts.append(f" {element.line()} ")
            return
        if tag == "input":  # hidden, checkbox, ...: not shown
            return
        block = tag in BLOCK
        if block:
            self._newline()
        elif tag in CELLS:
            self.parts.append(" ")
        self.parts.append(el.text or "")
        for child in el:
            self._walk(child)
            self.parts.append(child.tail or "")
        if block:
            self._newline()

    def _interactive(self, el, tag: str) -> Element | None:
        n = len(self.elements) + 1
        mark = el.get(MARK)
        mark = int(mark) if mark is not None and mark.isdigit() else None
        if tag == "a" and el.get("href") is not None:
            label = _words(el.text_content()) or el.get("title") or "link"
            href = lxml.html.urljoin(self.url, el.get("href"))
            return Element(n, "link", label, el, href=href, mark=mark)
        if tag == "button":
            label = _words(el.text_content()) or el.get("value") or "button"
            return Element(n, "button", label, el, mark=mark)
        if tag == "input":
            kind = (el.get("type") or "").lower()
            if kind in BUTTON_TYPES:
                return Element(n, "button", el.get("value") or "Submit", el, mark=mark)
            if kind in FIELD_TYPES:
                label = el.get("placeholder") or el.get("name") or "field"
                return Element(n, "field", _words(label), el, mark=mark)
        if tag == "textarea":
            label = el.get("placeholder") or el.get("name") or "text"
            el.set("value", el.text or "") if el.get("value") is None else None
            return Element(n, "field", _words(label), el, mark=mark)
        return None
