"""Readable text of a page: the title and the main content, without navigation and scripts."""

import re
from dataclasses import dataclass

import soupsieve
from bs4 import BeautifulSoup

from .fetch import Page

NOT_CONTENT = [
    "script",
    "style",
    "noscript",
    "template",
    "svg",
    "canvas",
    "iframe",
    "nav",
    "header",
    "footer",
    "aside",
    "form",
    "button",
    "select",
    "input",
    "textarea",
    "dialog",
]
# Compiled here, once: soupsieve compiles a selector under a lock, which gevent's monkey-patching turns into
# one that threads of the hub's pool cannot hand to each other, so pages extracted at once in a fresh server
# waited for that lock until the research deadline (only one of the first pages was read).
HIDDEN = soupsieve.compile(
    '[hidden], [aria-hidden="true"], [style*="display:none"], [style*="display: none"], '
    '[style*="visibility:hidden"], [style*="visibility: hidden"]'
)


@dataclass
class Document:
    url: str
    title: str
    text: str  # one block (paragraph, list item, heading...) per line


def extract(page: Page) -> Document:
    if page.content_type == "text/plain":
        text = page.body.decode(page.charset or "utf-8", errors="replace")
        return Document(page.url, "", normalise(text))
    soup = BeautifulSoup(page.body, "lxml", from_encoding=page.charset)
    title = normalise(soup.title.get_text(" ")) if soup.title else ""
    for element in soup(NOT_CONTENT):
        element.decompose()
    for element in HIDDEN.select(soup):
        element.decompose()
    roots = soup.find_all("main") or soup.find_all("article") or [soup.body or soup]
    text = "\n".join(root.get_text("\n") for root in roots)
    return Document(page.url, title, normalise(text))


def normalise(text: str) -> str:
    """Runs of white space become one space; empty lines go."""
    lines = (re.sub(r"\s+", " ", line).strip() for line in text.splitlines())
    return "\n".join(line for line in lines if line)
