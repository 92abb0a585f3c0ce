"""Citations of an internet-mode answer (chatapi/web/cite.py), on the local web's pages and answers the real
model wrote from them (collected when the threshold was picked)."""

import pytest

from chatapi.web import cite as cite_module
from chatapi.web.cite import cite, sentence_spans
from chatapi.web.extract import extract
from chatapi.web.fetch import AddressPolicy, fetch_page
from chatapi.web.rank import select_sources

VOLCANO_QUESTION = "How often does the Zorblax volcano erupt?"


@pytest.fixture(scope="module")
def sources(web):
    """The sources the server gives the model for the volcano question: [1] the volcano page, [2] gardening."""
    pages = [
        extract(fetch_page(f"{web.url}/articles/{name}", AddressPolicy("127.0.0.1"), 5))
        for name in ("volcano", "filler-one")
    ]
    found = select_sources(VOLCANO_QUESTION, pages, {}, 2000, lambda texts: [len(t.split()) * 2 for t in texts])
    assert [(s.n, s.title) for s in found] == [(1, "Zorblax volcano facts"), (2, "filler-one")]
    return found


def cited(text: str, citations: list[dict]) -> list[tuple[str, int]]:
    return [(text[c["start"] : c["end"]], c["n"]) for c in citations]


def test_sentences_end_at_stops_and_line_breaks_but_not_at_abbreviations_or_decimals():
    text = (
        "The Zorblax volcano erupts every 47 minutes, e.g. at 4.5 past the hour [1]. Why? Nobody knows!\n"
        "\n"
        '1. Visitors watch it from the shore. [2]\n- It is "safe."\n'
        "An unfinished sentence"
    )
    assert [text[start:end] for start, end in sentence_spans(text)] == [
        "The Zorblax volcano erupts every 47 minutes, e.g. at 4.5 past the hour [1].",
        "Why?",
        "Nobody knows!",
        "Visitors watch it from the shore. [2]",  # the list mark left out, the marker after the stop kept
        'It is "safe."',
        "An unfinished sentence",
    ]


def test_each_sentence_cites_the_source_that_supports_it(sources):
    # Two answers of the real model, one to each page, joined.
    text = (
        "As a rule once every 47 minutes, according to the observatory. "
        "Water the tomato in the morning and keep the soil loose."
    )
    citations = cite(text, sources)
    assert cited(text, citations) == [
        ("As a rule once every 47 minutes, according to the observatory.", 1),
        ("Water the tomato in the morning and keep the soil loose.", 2),
    ]
    assert citations[0] == {"start": 0, "end": 62, "n": 1}


def test_offsets_point_into_the_text_as_saved(sources):
    """A real answer over several lines: every span is one whole sentence, without the white space around it."""
    text = (
        "The volcano is a small island with a single volcano and a research observatory.\n\n"
        "  I am watching the volcano eruptions from a safe platform.  \n"
        "The capital of France is Paris."
    )
    citations = cite(text, sources)
    assert cited(text, citations) == [
        ("The volcano is a small island with a single volcano and a research observatory.", 1),
        ("I am watching the volcano eruptions from a safe platform.", 1),
    ]
    for c in citations:
        sentence = text[c["start"] : c["end"]]
        assert sentence == sentence.strip() and sentence.endswith(".")
        assert c["start"] == 0 or text[c["start"] - 1].isspace()


def test_markers_the_model_wrote_are_kept(sources):
    text = (
        "The Zorblax volcano erupts every 47 minutes [2]. "  # BM25 would say 1: the model's word stands
        "Water tomatoes in the morning. [1, 2] "
        "Keep the soil loose, says [9]."  # no source 9: matched like any sentence
    )
    assert cited(text, cite(text, sources)) == [
        ("The Zorblax volcano erupts every 47 minutes [2].", 2),
        ("Water tomatoes in the morning. [1, 2]", 1),
        ("Water tomatoes in the morning. [1, 2]", 2),
        ("Keep the soil loose, says [9].", 2),
    ]


def test_the_threshold_leaves_a_sentence_that_only_shares_words_uncited(sources, monkeypatch):
    # The real model's words: the first is the page's fact; the others share a word or two with the pages and
    # score below the threshold (0.40 and 0.39 of their ceiling), the last shares none.
    text = "Every 47 minutes. Water tomatoes during the day. I've never seen a volcano. The capital of France is Paris."
    assert cited(text, cite(text, sources)) == [("Every 47 minutes.", 1)]
    monkeypatch.setattr(cite_module, "THRESHOLD", 0.0)  # what the threshold keeps out
    assert cited(text, cite(text, sources)) == [
        ("Every 47 minutes.", 1),
        ("Water tomatoes during the day.", 2),
        ("I've never seen a volcano.", 1),
    ]


def test_nothing_to_match_cites_nothing(sources):
    assert cite("Yes, it is. [1]", []) == []  # no sources: even a marker names nothing
    assert cite("", sources) == []
    assert cite("Volcano!", sources) == []  # one word in common is no evidence
