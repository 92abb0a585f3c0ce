"""What a search asks for and what a hit shows: the query's words and phrases, and a snippet of the matching text
with the matched words' places, the same whichever database found the hit (chatapi/search.py)."""

import re
from dataclasses import dataclass

# A word: a run of letters and digits, as both indexes cut text (chatapi/search_index.py).
WORD = re.compile(r"[^\W_]+")
MAX_TERMS = 32  # words and phrases in one query
SNIPPET_CHARS = 200  # at most, before the "…" marks
CONTEXT_BEFORE = 60  # characters shown before the first match
ELLIPSIS = "…"


def words(text: str) -> list[str]:
    return WORD.findall(text)


@dataclass(frozen=True)
class Query:
    """Phrases of one or more words, all of which must occur; a word is a phrase of one."""

    phrases: tuple[tuple[str, ...], ...]

    @classmethod
    def parse(cls, text: str) -> "Query":
        """Words match in any order; text in double quotes matches as a phrase (an unclosed quote runs to the end).
        Anything but letters and digits separates words."""
        phrases = []
        for i, part in enumerate(text.split('"')):
            found = tuple(w.lower() for w in words(part))
            if i % 2:  # inside quotes
                phrases.append(found) if found else None
            else:
                phrases.extend((w,) for w in found)
        return cls(tuple(dict.fromkeys(phrases)))  # each once, in order

    def fts5(self) -> str:
        """FTS5's MATCH syntax: every phrase quoted (its words are letters and digits only), all of them required."""
        return " AND ".join('"' + " ".join(phrase) + '"' for phrase in self.phrases)

    def websearch(self) -> str:
        """PostgreSQL's websearch_to_tsquery syntax: every phrase quoted, so that no word (or, -) is an operator."""
        return " ".join('"' + " ".join(phrase) + '"' for phrase in self.phrases)

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Where the query's phrases occur in text as (start, end) character offsets, sorted, overlaps merged."""
        tokens = [(m.start(), m.end(), m.group().lower()) for m in WORD.finditer(text)]
        lowered = [token[2] for token in tokens]
        found = []
        for phrase in self.phrases:
            n = len(phrase)
            for i in range(len(tokens) - n + 1):
                if tuple(lowered[i : i + n]) == phrase:
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
        first = spans[0][0] if spans else 0
        start = max(0, min(first - CONTEXT_BEFORE, len(flat) - SNIPPET_CHARS))
        if start > 0 and flat[start - 1] != " ":  # begin at a word
            space = flat.find(" ", start, first)
            start = space + 1 if space != -1 else start
        end = min(len(flat), start + SNIPPET_CHARS)
        if end < len(flat) and flat[end] != " ":  # end at a word
            space = flat.rfind(" ", start, end)
            end = space if space > start else end
    shown = flat[start:end]
    shift = 0
    if start > 0:
        shown, shift = ELLIPSIS + shown, len(ELLIPSIS)
    if end < len(flat):
        shown += ELLIPSIS
    highlights = [
        {"start": max(s, start) - start + shift, "end": min(e, end) - start + shift}
        for s, e in spans
        if s < end and e > start
    ]
    return shown, highlights
