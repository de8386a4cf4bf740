"""The procedurally generated shop: a catalogue deterministic from a seed, and its HTML pages.

A site has ``num_categories`` kinds of goods (hats, bags, ...). Each kind comes in a few
(colour, material) combinations, each in two or three sizes; every (colour, material, kind, size)
is one item with its own id and price. Pages (paths relative to a session's ``/s/<sid>/``)::

    ""              home: search box, category links, a JavaScript-filled "deal" link
    c/<kind>?p=N    a category, page N (``page_size`` items a page; "page i/n", prev/next links
                    when there is more than one page)
    search?q=..&p=N search results (items whose words contain every query word; fillers such as
                    "the" or "size" are ignored), paginated
    i/<id>          an item: its name, size and price, an "Add to cart" form (POST cart/add)
    cart            the cart: items, "Remove" forms (POST cart/remove), total, checkout link
    checkout        a form asking for a name (POST checkout -> order/<n>, or the error shown)
    order/<n>       the confirmation of order n

The pages are plain server-side HTML; the only script fills the home page's deal box, so a
client without JavaScript (the text backend) never sees that link.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from html import escape
from urllib.parse import quote_plus

KINDS = ("hat", "bag", "shoe", "shirt", "scarf", "belt", "sock", "coat", "glove", "skirt")
COLORS = ("red", "blue", "green", "black", "white", "gray", "pink", "brown")
MATERIALS = ("wool", "cotton", "linen", "leather", "silk", "denim")
SIZES = ("S", "M", "L")
# words a search ignores, as shop search engines drop stopwords: "the red wool hat, size M" finds
# what "red wool hat m" finds
FILLER_WORDS = frozenset({"a", "an", "the", "of", "size"})


@dataclass(frozen=True)
class Item:
    """One item of the catalogue. ``name`` is "<colour> <material> <kind>"."""

    id: int
    kind: str
    color: str
    material: str
    size: str
    price: int

    @property
    def name(self) -> str:
        return f"{self.color} {self.material} {self.kind}"

    @property
    def label(self) -> str:
        """How listings show the item (and how goals name it: "<name>, size <size>")."""
        return f"{self.name}, {self.size}"

    def words(self) -> set[str]:
        return {self.color, self.material, self.kind, self.kind + "s", self.size.lower()}


@dataclass(frozen=True)
class Site:
    """A generated catalogue: ``kinds`` in home-page order, ``items`` in listing order."""

    seed: int
    kinds: tuple[str, ...]
    items: tuple[Item, ...]
    deal: int

    def item(self, item_id: int) -> Item | None:
        return next((it for it in self.items if it.id == item_id), None)

    def category(self, kind: str) -> list[Item]:
        return [it for it in self.items if it.kind == kind]

    def search(self, query: str) -> list[Item]:
        words = [w for w in query.lower().replace(",", " ").split() if w not in FILLER_WORDS]
        if not words:
            return []
        return [it for it in self.items if all(w in it.words() for w in words)]


def generate_site(seed: int, num_categories: int = 4, combos: tuple[int, int] = (3, 4)) -> Site:
    """The site of ``seed``: ``num_categories`` kinds, each with combos[0]..combos[1] (colour,
    material) combinations in 2-3 sizes each, prices $5-$99, ids unique and shuffled."""
    rng = random.Random(seed)
    kinds = tuple(rng.sample(KINDS, num_categories))
    rows = []
    for kind in kinds:
        pairs = [(c, m) for c in COLORS for m in MATERIALS]
        for color, material in rng.sample(pairs, rng.randint(*combos)):
            for size in sorted(rng.sample(SIZES, rng.randint(2, 3)), key=SIZES.index):
                rows.append((kind, color, material, size, rng.randint(5, 99)))
    rng.shuffle(rows)
    ids = rng.sample(range(100, 1000), len(rows))
    items = tuple(Item(i, *row) for i, row in zip(ids, rows))
    return Site(seed, kinds, items, deal=rng.choice(items).id)


def plural(kind: str) -> str:
    return kind.capitalize() + "s"


# ----------------------------------------------------------------------------------- pages


def _doc(title: str, prefix: str, cart_count: int, body: str, script: str = "") -> str:
    nav = f'<nav><a href="{prefix}">Home</a> <a href="{prefix}cart">Cart ({cart_count})</a></nav>'
    return (
        "<!doctype html><html><head><meta charset=utf-8>"
        f"<title>{escape(title)}</title></head><body>"
        f"<h1>{escape(title)}</h1>{nav}{body}{script}</body></html>"
    )


def _listing(prefix: str, items: list[Item], page: int, page_size: int, more: str) -> str:
    """One page of items (links to item pages) with "page i/n" and prev/next links."""
    pages = max(1, -(-len(items) // page_size))
    page = min(max(page, 1), pages)
    shown = items[(page - 1) * page_size : page * page_size]
    rows = "".join(f'<li><a href="{prefix}i/{it.id}">{escape(it.label)}</a></li>' for it in shown)
    if pages == 1:
        return f"<ul>{rows}</ul>"
    nav = [f'<a href="{more}p={page - 1}">prev</a>'] if page > 1 else []
    nav += [f'<a href="{more}p={page + 1}">next</a>'] if page < pages else []
    return f"<ul>{rows}</ul><p>page {page}/{pages} {' '.join(nav)}</p>"


def home_page(site: Site, prefix: str, cart_count: int) -> str:
    cats = "".join(f'<li><a href="{prefix}c/{k}">{plural(k)}</a></li>' for k in site.kinds)
    form = (
        f'<form action="{prefix}search" method="get">'
        '<input type="text" name="q" placeholder="search"><button type="submit">Go</button></form>'
    )
    deal = site.item(site.deal)
    link = f'Deal: <a href="{prefix}i/{deal.id}">{escape(deal.label)}</a>'
    # the deal box is filled by JavaScript: only a client that runs scripts shows it
    script = (
        "<p id=deal></p><script>document.getElementById('deal').innerHTML = "
        f"{json.dumps(link)};</script>"
    )
    return _doc("Shop", prefix, cart_count, form + f"<ul>{cats}</ul>", script)


def category_page(site: Site, prefix: str, cart_count: int, kind: str, page: int, size: int):
    items = site.category(kind)
    body = _listing(prefix, items, page, size, f"{prefix}c/{kind}?")
    return _doc(plural(kind), prefix, cart_count, body)


def search_page(site: Site, prefix: str, cart_count: int, query: str, page: int, size: int):
    found = site.search(query)
    more = f"{prefix}search?q={quote_plus(query)}&"
    body = _listing(prefix, found, page, size, more) if found else "<p>no results</p>"
    return _doc(f"Search: {query}", prefix, cart_count, body)


def item_page(item: Item, prefix: str, cart_count: int) -> str:
    # colour and material are in the title (the item's name)
    rows = [("size", item.size), ("price", f"${item.price}")]
    table = "".join(f"<tr><td>{k}</td><td>{escape(v)}</td></tr>" for k, v in rows)
    form = (
        f'<form action="{prefix}cart/add" method="post">'
        f'<input type="hidden" name="id" value="{item.id}">'
        '<button type="submit">Add to cart</button></form>'
    )
    return _doc(item.name, prefix, cart_count, f"<table>{table}</table>{form}")


def cart_page(items: list[Item], prefix: str) -> str:
    rows = "".join(
        f"<li>{escape(it.label)} ${it.price} "
        f'<form action="{prefix}cart/remove" method="post" style="display:inline">'
        f'<input type="hidden" name="id" value="{it.id}">'
        '<button type="submit">Remove</button></form></li>'
        for it in items
    )
    total = sum(it.price for it in items)
    body = f"<ul>{rows}</ul><p>total ${total}</p>" if items else "<p>empty</p>"
    if items:
        body += f'<p><a href="{prefix}checkout">Checkout</a></p>'
    return _doc("Cart", prefix, len(items), body)


def checkout_page(items: list[Item], prefix: str, error: str = "") -> str:
    total = sum(it.price for it in items)
    err = f"<p>error: {escape(error)}</p>" if error else ""
    form = (
        f'<form action="{prefix}checkout" method="post">'
        '<input type="text" name="name" placeholder="name">'
        '<button type="submit">Place order</button></form>'
    )
    return _doc("Checkout", prefix, len(items), f"{err}<p>total ${total}</p>{form}")


def order_page(number: int, items: list[Item], name: str, prefix: str) -> str:
    what = "; ".join(it.label for it in items)
    body = f"<p>{escape(what)} for {escape(name)}</p>"
    return _doc(f"Order {number} placed", prefix, 0, body)


def not_found_page(prefix: str) -> str:
    return _doc("Not found", prefix, 0, "")
