"""Reading HTML the way a test needs it: a small element tree, text by test id, field feedback."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source"}


@dataclass
class Node:
    """An element of a parsed page: tag, attributes, children and parent."""

    tag: str
    attrs: dict[str, str]
    parent: Node | None = None
    children: list[Node | str] = field(default_factory=list)

    def text(self) -> str:
        """Return the text content, whitespace collapsed."""
        parts: list[str] = []
        for child in self.children:
            parts.append(child if isinstance(child, str) else child.text())
        return " ".join(" ".join(parts).split())

    def walk(self):
        """Yield every element below this one, depth first."""
        for child in self.children:
            if isinstance(child, Node):
                yield child
                yield from child.walk()

    def find_all(self, **attrs: str) -> list[Node]:
        """Return the elements whose attributes match (``data_testid`` means data-testid)."""
        wanted = {k.replace("_", "-"): v for k, v in attrs.items()}
        return [n for n in self.walk() if all(n.attrs.get(k) == v for k, v in wanted.items())]

    def find(self, **attrs: str) -> Node | None:
        """Return the first matching element, or None."""
        found = self.find_all(**attrs)
        return found[0] if found else None

    def ancestors(self):
        """Yield the elements this one is inside, nearest first."""
        node = self.parent
        while node is not None:
            yield node
            node = node.parent


class _TreeBuilder(HTMLParser):
    """Build a small tree of Nodes; tolerant of the unclosed tags HTML allows."""

    def __init__(self) -> None:
        """Start with an empty root element."""
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {})
        self.current = self.root

    def handle_starttag(self, tag, attrs):
        """Open an element (void elements close at once)."""
        node = Node(tag, {k: (v if v is not None else "") for k, v in attrs}, self.current)
        self.current.children.append(node)
        if tag not in VOID:
            self.current = node

    def handle_startendtag(self, tag, attrs):
        """Add a self-closed element."""
        node = Node(tag, {k: (v if v is not None else "") for k, v in attrs}, self.current)
        self.current.children.append(node)

    def handle_endtag(self, tag):
        """Close up to the nearest open element of that tag."""
        node = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.current = node.parent

    def handle_data(self, data):
        """Keep text as a child of the open element."""
        self.current.children.append(data)


def parse_html(html: str) -> Node:
    """Parse a page or fragment into a Node tree."""
    builder = _TreeBuilder()
    builder.feed(html)
    builder.close()
    return builder.root


def feedback(html: str, form: str, field_name: str) -> str:
    """Return the text of a field's feedback container (``<form>-<field>-feedback``)."""
    node = parse_html(html).find(id=f"{form}-{field_name}-feedback")
    assert node is not None, f"no {form}-{field_name}-feedback in:\n{html}"
    return node.text()


def by_testid(html: str, name: str) -> str:
    """Return the text of the element with ``data-testid=name``."""
    node = parse_html(html).find(data_testid=name)
    assert node is not None, f"no data-testid={name} in:\n{html}"
    return node.text()


class Html:
    """The HTML helper of the ``html`` fixture: pages or responses in, elements and text out."""

    @staticmethod
    def of(page: str | object) -> str:
        """The markup of a page given as text or as a test client response."""
        return page if isinstance(page, str) else page.get_data(as_text=True)

    def parse(self, page: str | object) -> Node:
        """The element tree of a page or response."""
        return parse_html(self.of(page))

    def find(self, page: str | object, **attrs: str) -> Node | None:
        """The first element with these attributes (``data_testid`` means data-testid)."""
        return self.parse(page).find(**attrs)

    def by_testid(self, page: str | object, name: str) -> str:
        """The text of the element with ``data-testid=name``."""
        return by_testid(self.of(page), name)

    def feedback(self, page: str | object, form: str, field_name: str) -> str:
        """The text of a field's feedback container."""
        return feedback(self.of(page), form, field_name)
