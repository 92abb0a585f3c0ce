"""What a search asks for and what a hit shows: the query's phrases, and a snippet of the matching text with the
matched words' places, the same whichever database found the hit (chatapi/search.py)."""

import functools
import re
import sys
import unicodedata
from dataclasses import dataclass

from .search_index import ASCII_PUNCTUATION

MAX_TERMS = 32  # words and phrases in one query
SNIPPET_CHARS = 200  # at most, before the "…" marks
CONTEXT_BEFORE = 60  # characters shown before the first match
ELLIPSIS = "…"
NO_PUNCTUATION = str.maketrans(ASCII_PUNCTUATION, " " * len(ASCII_PUNCTUATION))  # as PostgreSQL's text gets it


@functools.cache
def word_pattern() -> re.Pattern:
    """A word: a run of letters, marks, digits and private-use characters, as the indexes cut text
    (chatapi/search_index.py), from this Python's Unicode tables. Built once, on first use (0.15 s)."""
    ranges, start = [], None
    for code in range(sys.maxunicode + 2):
        category = unicodedata.category(chr(code)) if code <= sys.maxunicode else "Cn"
        inside = category[0] in "LMN" or category == "Co"
        if inside and start is None:
            start = code
        elif not inside and start is not None:
            ranges.append(f"{re.escape(chr(start))}-{re.escape(chr(code - 1))}")
            start = None
    return re.compile(f"[{''.join(ranges)}]+")


def folded_words(text: str) -> tuple[str, ...]:
    return tuple(word.casefold() for word in word_pattern().findall(text))


@dataclass(frozen=True)
class Phrase:
    text: str  # as typed, white space folded: each database cuts it into words with its own tokenizer
    words: tuple[str, ...]  # as Python cuts it, case folded: where the hit's words are marked


@dataclass(frozen=True)
class Query:
    """Phrases, all of which must occur; a word is a phrase of one."""

    phrases: tuple[Phrase, ...]

    @classmethod
    def parse(cls, text: str) -> "Query":
        """White space separates phrases, which match in any order; text in double quotes is one phrase (an
        unclosed quote runs to the end). A phrase with no letter or digit is left out; within one, anything but
        letters, marks and digits separates words that must come side by side (`e-mail`: `e` then `mail`)."""
        phrases = {}
        for i, part in enumerate(text.split('"')):
            for typed in [part] if i % 2 else part.split():
                words = folded_words(typed)
                if words:
                    phrases.setdefault(words, Phrase(" ".join(typed.split()), words))
        return cls(tuple(phrases.values()))

    def fts5(self) -> str:
        """FTS5's MATCH syntax: every phrase a quoted string (no operator inside), all of them required."""
        return " AND ".join('"' + phrase.text.replace('"', '""') + '"' for phrase in self.phrases)

    def websearch(self) -> str:
        """PostgreSQL's websearch_to_tsquery syntax: every phrase quoted, so that no word (or, -) is an operator,
        with ASCII punctuation turned into spaces as in the indexed text."""
        return " ".join('"' + phrase.text.translate(NO_PUNCTUATION) + '"' for phrase in self.phrases)

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Where the query's phrases occur in text as (start, end) character offsets, sorted, overlaps merged."""
        tokens = [(m.start(), m.end(), m.group().casefold()) for m in word_pattern().finditer(text)]
        folded = [token[2] for token in tokens]
        found = []
        for phrase in self.phrases:
            n = len(phrase.words)
            for i in range(len(tokens) - n + 1):
                if tuple(folded[i : i + n]) == phrase.words:
                    found.append((tokens[i][0], tokens[i + n - 1][1]))
        merged: list[tuple[int, int]] = []
        for start, end in sorted(found):
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
            else:
                merged.append((start, end))
        return merged


def snippet(query: Query, text: str) -> tuple[str, list[dict]]:
    """The text around the first match, white space folded, at most SNIPPET_CHARS characters and an ellipsis at each
    cut end, and the matched words' places in it ({"start", "end"}: character offsets, end excluded)."""
    flat = " ".join(text.split())
    spans = query.spans(flat)
    start, end = 0, len(flat)
    if end > SNIPPET_CHARS:
        first_start, first_end = spans[0] if spans else (0, 0)
        start = max(0, min(first_start - CONTEXT_BEFORE, len(flat) - SNIPPET_CHARS))
        if start > 0 and flat[start - 1] != " ":  # begin at a word
            space = flat.find(" ", start, first_start)
            start = space + 1 if space != -1 else start
        end = min(len(flat), start + SNIPPET_CHARS)
        if end < len(flat) and flat[end] != " ":  # end at a word, unless that cuts the first match off
            space = flat.rfind(" ", start, end)
            end = space if space >= min(first_end, end) and space > start else end
    shown = flat[start:end]
    shift = 0
    if start > 0:
        shown, shift = ELLIPSIS + shown, len(ELLIPSIS)
    if end < len(flat):
        shown += ELLIPSIS
    places = [(max(s, start) - start + shift, min(e, end) - start + shift) for s, e in spans if s < end and e > start]
    return shown, [{"start": s, "end": e} for s, e in places]
