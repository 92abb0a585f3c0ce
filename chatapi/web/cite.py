"""Citations for an internet-mode answer: each sentence to the source whose passage supports it best.

The small model rarely writes [n] itself, so the server finds the support after the reply: every sentence
is scored (BM25, chatapi/web/rank.py) against the passages the prompt gave the model, and cites the source
of the best one when it scores high enough. A sentence holding [n] markers the model wrote keeps those.
"""

import re

from .rank import BM25, Source, terms

# A sentence is cited when its best passage scores at least THRESHOLD of its ceiling (the sum of its terms' idf): on
# the real model's answers, between the sentences a passage supports and the others (docs/benchmarks.md, "Citations").
THRESHOLD = 0.45
MIN_TERMS = 2  # words of a sentence, stop words left out, for it to be matched at all

MARKER = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")
# A sentence ends at . ! or ? (closing quotes or brackets, and markers like " [1]", go with it) before white
# space; a line break always ends one. "4.5" has no space after its point.
SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*(?:[ \t]*\[\d+(?:\s*,\s*\d+)*\])*(?=\s|$)")
ABBREVIATIONS = {"e.g.", "i.e.", "vs.", "cf.", "approx.", "ca.", "mr.", "mrs.", "ms.", "dr.", "st."}
LIST_MARK = re.compile(r"(?:[-*+•]|#+|\d+[.)])\s+")  # "- ", "1. ", "## " before a line's first sentence


def cite(text: str, sources: list[Source]) -> list[dict]:
    """`[{"start", "end", "n"}]`, in text order: the character span of each cited sentence of `text` and the
    number of the source it cites (a sentence with several markers of its own is cited once for each)."""
    numbers = {source.n for source in sources}
    owners = [source.n for source in sources for _ in source.passages]
    scorer = BM25([f"{source.title} {passage}" for source in sources for passage in source.passages])
    citations = []
    for start, end in sentence_spans(text):
        sentence = text[start:end]
        written = [n for n in marker_numbers(sentence) if n in numbers]
        cited = written or [best_source(MARKER.sub(" ", sentence), scorer, owners)]
        citations += [{"start": start, "end": end, "n": n} for n in cited if n is not None]
    return citations


def marker_numbers(sentence: str) -> list[int]:
    """The source numbers of the sentence's [n] (and [n, m]) markers, each once, in order."""
    found = [int(n) for marker in MARKER.findall(sentence) for n in marker.split(",")]
    return list(dict.fromkeys(found))


def best_source(sentence: str, scorer: BM25, owners: list[int]) -> int | None:
    """The source of the passage that supports the sentence best, when it passes THRESHOLD."""
    words = set(terms(sentence))
    # One word in common is no evidence ("Water, water, water." matched a gardening page at 2.1).
    if not owners or len(words) < MIN_TERMS:
        return None
    ceiling = sum(scorer.idf(term) for term in words)
    scores = scorer.scores(sentence)
    best = max(range(len(scores)), key=scores.__getitem__)
    return owners[best] if scores[best] > 0 and scores[best] / ceiling >= THRESHOLD else None


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence of the text, without the white space around it or a list mark before it."""
    spans = []
    for line in re.finditer(r"[^\n]+", text):
        begin = line.start()
        for end in SENTENCE_END.finditer(text, line.start(), line.end()):
            if not ends_sentence(text[begin : end.start()], end.group()):
                continue
            spans.append(trimmed(text, begin, end.end()))
            begin = end.end()
        spans.append(trimmed(text, begin, line.end()))
    # Pieces without a letter or digit outside markers ("**", a lone "[1]") are no sentences.
    return [(s, e) for s, e in spans if re.search(r"\w", MARKER.sub("", text[s:e]))]


def ends_sentence(before: str, punctuation: str) -> bool:
    """Whether punctuation after `before` ends a sentence: not the point of "e.g." or of a list's "1."."""
    if not punctuation.startswith("."):
        return True
    words = before.split()
    if not words:
        return False
    word = words[-1] + "."
    return word.lower() not in ABBREVIATIONS and not (len(words) == 1 and words[0].isdigit())


def trimmed(text: str, start: int, end: int) -> tuple[int, int]:
    """The span without surrounding white space or a list mark at its start."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    mark = LIST_MARK.match(text, start, end)
    return (mark.end(), end) if mark else (start, end)
