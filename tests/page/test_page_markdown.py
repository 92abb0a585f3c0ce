"""Replies as Markdown in the page (chatapi/static/markdown.js through views.js), in headless Chromium against the
real server and model: what each feature looks like, the code blocks' highlighting and copy button, Markdown that
tries to run script, and a reply drawn as Markdown while it streams, once a frame, and read out a block at a time."""

import json

from playwright.sync_api import Page, expect

from tests.support.chats import ENDLESS, GREEDY, QUESTION, add_message, new_chat
from tests.support.page import CITED, CODE, FEATURES, SOURCES, last_reply, save_answer, save_screenshot

# Markdown that tries to run script, load something or reach a script URL, every way we know of. A page that
# runs any of it sets window.__pwned.
HOSTILE = """<script>window.__pwned = 1</script>

<img src=x onerror="window.__pwned = 2">

<div onmouseover="window.__pwned = 3">an HTML block</div>

<iframe src="javascript:window.__pwned = 4"></iframe><svg onload="window.__pwned = 5"></svg>

<style>#chat-title { display: none }</style>

[a script link](javascript:window.__pwned=6) [a data link](data:text/html,<script>window.__pwned=7</script>)
[spaced](  JaVaScRiPt:window.__pwned=8) [entity](&#106;avascript:window.__pwned=9) <javascript:window.__pwned=10>
<a href="javascript:window.__pwned=11">an HTML link</a> [vb](vbscript:msgbox(1)) [file](file:///etc/passwd)
[title](https://example.org/ "x\\" onmouseover=\\"window.__pwned=12") ![an image](https://example.org/x.png)

```html
<script>window.__pwned = 13</script>
```"""

# Each shown element or attribute that could run script, load something or style the page: there must be none.
RISKY = """() => [...document.querySelectorAll("#message-list .bubble *")].flatMap((element) => {
  const found = /^(SCRIPT|IMG|IFRAME|SVG|STYLE|OBJECT|EMBED|FORM|INPUT|VIDEO|AUDIO|LINK|META)$/i.test(element.tagName)
    ? [element.tagName] : [];
  for (const a of element.attributes) {
    if (/^on/i.test(a.name) || a.name === "style" || a.name === "src" ||
        /^(java|vb)script:|^data:|^file:/i.test(a.value.replace(/[\\s\\0]/g, ""))) {
      found.push(`${element.tagName} ${a.name}=${a.value}`);
    }
  }
  return found;
})"""


def assistant(page: Page, index: int):
    return page.locator("#message-list .message.assistant").nth(index)


def test_each_markdown_feature_shows_and_the_persons_messages_stay_plain_text(tab, page_server, app, tmp_path):
    chat_id = new_chat(page_server, FEATURES, FEATURES, "And the sources?")
    citations = [{"start": 2, "end": 46, "n": 1}, {"start": 52, "end": 84, "n": 2}]
    assert CITED[2:46] == "The Zorblax volcano erupts every 47 minutes." and CITED[52:84].endswith("water.")
    save_answer(app, chat_id, CITED, SOURCES, citations)
    page = tab.page
    page.goto(f"/#chat={chat_id}")
    expect(page.locator("#message-list .message")).to_have_count(4)
    reply = assistant(page, 0).locator(".bubble")

    # The person's message: the very text, no element made of it.
    human = page.locator("#message-list .message.human .bubble").first
    assert human.text_content() == FEATURES
    assert human.evaluate("(bubble) => bubble.childElementCount") == 0

    expect(reply.locator("h1")).to_have_text("Volcano notes")
    expect(reply.locator("h2")).to_have_text("Eruptions")
    expect(reply.locator("em").first).to_have_text("emphasis")
    expect(reply.locator("strong")).to_have_text("strong words")
    expect(reply.locator("s")).to_have_text("struck")
    inline = reply.locator("p > code")
    expect(inline).to_have_text("inline code")
    assert inline.evaluate("(code) => getComputedStyle(code).fontFamily").startswith("ui-monospace")
    expect(reply.locator("p br")).to_have_count(1)  # a newline in a reply is a line break
    expect(reply.locator("ol > li")).to_have_count(2)
    expect(reply.locator("ol > li > ul > li")).to_have_text(["nested item"])
    expect(reply.locator("hr")).to_have_count(1)
    for element in ("h1", "h2", "strong", "s", "ol", "blockquote", "table", "pre", "hr"):
        expect(reply.locator(element).first).to_be_visible()

    # Links: in the quote, a mail address and a bare web address; each opens a new tab without the opener.
    links = reply.locator("a")
    expect(links).to_have_text(["link", "mailto:team@example.org", "https://example.org/plain"])
    assert [link.get_attribute("href") for link in links.all()] == [
        "https://example.org/volcano",
        "mailto:team@example.org",
        "https://example.org/plain",
    ]
    for link in links.all():
        assert link.get_attribute("target") == "_blank" and link.get_attribute("rel") == "noopener noreferrer"
    expect(reply.locator("blockquote a")).to_have_attribute("title", "The volcano page")

    # The table, with each column's alignment applied (by class: the page's policy refuses style attributes).
    expect(reply.locator("th")).to_have_text(["Name", "Height", "Year"])
    cells = reply.locator("td")
    expect(cells).to_have_text(["Etna", "3357", "2024"])
    aligned = [cell.evaluate("(td) => getComputedStyle(td).textAlign") for cell in cells.all()]
    assert aligned == ["left", "center", "right"]

    # The code block: highlighted (the theme's colours apply), its language above it.
    block = reply.locator(".code-block")
    expect(block.locator(".code-language")).to_have_text("python")
    code = block.locator("pre code.language-python")
    assert code.text_content() == CODE
    expect(code.locator(".hljs-keyword")).to_have_text(["def", "return"])
    expect(code.locator(".hljs-string")).to_have_text(['"boom"'])
    colours = code.evaluate("""(code) => [code, code.querySelector(".hljs-keyword"), code.querySelector(".hljs-string")]
      .map((element) => getComputedStyle(element).color)""")
    assert len(set(colours)) == 3, colours

    # Citations inside Markdown: the added [1] inside the bold sentence, the written [2] in the list item.
    cited = assistant(page, 1).locator(".bubble")
    expect(cited).to_have_text("The Zorblax volcano erupts every 47 minutes.[1]Tomatoes like [2] morning water.")
    expect(cited.locator("strong sup.citation a")).to_have_attribute("href", SOURCES[0]["url"])
    expect(cited.locator("strong sup.citation a")).to_have_accessible_name("Source 1: Zorblax volcano facts")
    expect(cited.locator("li sup.citation a")).to_have_attribute("href", SOURCES[1]["url"])
    expect(cited.locator("li sup.citation a")).to_have_accessible_name("Source 2: Gardening")
    save_screenshot(page, tmp_path, "screenshot-markdown.png")


def test_the_copy_button_puts_the_code_on_the_clipboard_by_mouse_and_by_keyboard(open_tab, page_server):
    chat_id = new_chat(page_server, "Show me some code.", FEATURES)
    tab = open_tab(page_server, permissions=["clipboard-read", "clipboard-write"])
    page = tab.page
    page.goto(f"/#chat={chat_id}")
    button = last_reply(page).locator(".copy-code")
    expect(button).to_be_visible()
    expect(button).to_have_accessible_name("Copy code")

    page.evaluate("navigator.clipboard.writeText('something else')")
    button.click()
    expect(button).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == CODE

    page.evaluate("navigator.clipboard.writeText('something else')")
    page.reload()
    button = last_reply(page).locator(".copy-code")
    button.focus()
    page.keyboard.press("Enter")
    expect(button).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == CODE


def test_markdown_that_tries_to_run_script_runs_nothing_and_shows_the_html_as_text(tab, page_server):
    chat_id = new_chat(page_server, "Write some HTML.")
    add_message(page_server, chat_id, HOSTILE, role="Assistant")
    page = tab.page
    page.goto(f"/#chat={chat_id}")
    reply = last_reply(page)
    expect(reply).to_have_attribute("data-state", "saved")
    check_hostile_reply(page, reply)


def check_hostile_reply(page: Page, reply) -> None:
    """HOSTILE as the page shows it: its HTML as text, only web addresses linked, nothing run or loaded."""
    bubble = reply.locator(".bubble")
    # The HTML is there to read, as text.
    for written in ("<script>window.__pwned = 1</script>", '<img src=x onerror="window.__pwned = 2">',
                    '<div onmouseover="window.__pwned = 3">an HTML block</div>', "<style>#chat-title"):
        expect(bubble).to_contain_text(written)
    expect(bubble.locator("pre code")).to_have_text("<script>window.__pwned = 13</script>\n")
    assert page.evaluate(RISKY) == []
    # Of all those links only the web addresses are links (the image became one), each to a new tab.
    links = bubble.locator("a")
    expect(links).to_have_text(["title", "an image"])
    assert [link.get_attribute("href") for link in links.all()] == [
        "https://example.org/",
        "https://example.org/x.png",
    ]
    for link in links.all():
        assert link.get_attribute("target") == "_blank" and link.get_attribute("rel") == "noopener noreferrer"
    assert links.first.get_attribute("title") == 'x" onmouseover="window.__pwned=12'
    expect(bubble).to_contain_text("[a script link](javascript:window.__pwned=6)")
    # Pointing and clicking at what would have been script does nothing either.
    bubble.hover()
    for paragraph in bubble.locator("p:not(:has(a))").all():
        paragraph.click()
    assert page.evaluate("window.__pwned") is None
    expect(page.locator("#chat-title")).to_be_visible()


def test_a_streamed_reply_that_tries_to_run_script_runs_nothing(tab, page_server):
    """The server's own stream, with the reply's pieces and its saved text replaced by HOSTILE on the way."""
    page = tab.page
    chat_id = new_chat(page_server, QUESTION)
    served = []

    def tamper(route):
        response = route.fetch(timeout=120_000)
        first, rest = rewritten_stream(response.text(), HOSTILE, len(HOSTILE))
        served.append(first)
        route.fulfill(status=response.status, content_type=response.headers["content-type"], body=first + rest)

    page.route("**/conversations/inference/**", tamper)
    page.goto(f"/?max_tokens=24&{GREEDY}#chat={chat_id}")
    page.get_by_role("button", name="Get a reply").click()
    reply = last_reply(page)
    expect(reply).to_have_attribute("data-state", "done")
    assert len(served) == 1
    check_hostile_reply(page, reply)


def rewritten_stream(body: str, text: str, split: int) -> tuple[str, str]:
    """The server's event stream for a reply, rewritten to stream `text` in pieces of two characters: its
    events up to the first token, then the pieces of text[:split] (the first part, with a short reconnect
    time), and the rest with `done` (its saved message's text replaced by `text`)."""
    blocks = [block for block in body.split("\n\n") if block.strip()]

    def kind(block: str) -> str:
        return next((line[7:] for line in block.split("\n") if line.startswith("event: ")), "message")

    head = []
    for block in blocks:
        if kind(block) == "message":
            break
        head.append(block)
    done = next(block for block in blocks if kind(block) == "done")
    lines = done.split("\n")
    at = next(i for i, line in enumerate(lines) if line.startswith("data: "))
    data = json.loads(lines[at][6:])
    data["message"]["message"] = text
    lines[at] = "data: " + json.dumps(data)

    def pieces(part: str, first: int) -> list[str]:
        return [
            f"id: piece-{first + i}\ndata: {json.dumps({'content': part[i * 2 : i * 2 + 2]})}"
            for i in range((len(part) + 1) // 2)
        ]

    first = ["retry: 100", *head, *pieces(text[:split], 0)]
    rest = [*pieces(text[split:], 10_000), "\n".join(lines)]
    return "\n\n".join(first) + "\n\n", "\n\n".join(rest) + "\n\n"


STREAMED = """## Steps

First, *stir* the pot.

- one
- two

```js
const heat = 3;
const time = 10;
```

Serve **hot**."""


def test_a_streaming_reply_is_markdown_drawn_once_a_frame_and_read_out_a_block_at_a_time(tab, page_server):
    """The reply's first part arrives at once and its stream drops; the page shows it as Markdown while it waits
    to reconnect, having drawn it a few times rather than once per piece; the rest comes on the reconnect."""
    page = tab.page
    chat_id = new_chat(page_server, *ENDLESS)
    split = STREAMED.index("const time")  # in the middle of the code block
    parts = []
    waiting = []

    def serve(route):
        if not parts:
            response = route.fetch(timeout=120_000)
            parts.extend(rewritten_stream(response.text(), STREAMED, split))
            route.fulfill(status=200, content_type="text/event-stream", body=parts[0])
        else:
            waiting.append(route)  # the reconnect: answered when the test has looked at the page

    page.route("**/conversations/inference/**", serve)
    page.goto(f"/?max_tokens=16&{GREEDY}#chat={chat_id}")
    page.evaluate("""() => {
      window.__draws = 0;  // each time a reply's bubble is drawn
      new MutationObserver((records) => {
        window.__draws += records.filter((r) => r.target.classList?.contains("bubble")).length;
      }).observe(document.getElementById("message-list"), { childList: true, subtree: true });
    }""")
    page.get_by_role("button", name="Get a reply").click()
    reply = last_reply(page)
    expect(reply.get_by_role("status")).to_have_text("Reconnecting…")
    expect(reply).to_have_attribute("data-state", "streaming")

    # The first part, as Markdown, while the reply is still being written.
    bubble = reply.locator(".bubble.markdown")
    expect(bubble.locator("h2")).to_have_text("Steps")
    expect(bubble.locator("p em")).to_have_text("stir")
    expect(bubble.locator("ul > li")).to_have_text(["one", "two"])
    expect(bubble.locator("pre code.language-js")).to_have_text("const heat = 3;\n")
    expect(bubble.locator(".hljs-keyword")).to_have_text(["const"])
    pieces = (split + 1) // 2
    draws = page.evaluate("window.__draws")
    assert pieces > 30 and 1 <= draws <= 4, f"{draws} draws for {pieces} pieces"
    # Read out: the blocks that are finished, each once; not the code block still being written.
    announcer = page.locator("#reply-announcer")
    expect(announcer).to_have_attribute("aria-live", "polite")
    expect(announcer.locator("p")).to_have_text(["Steps", "First, stir the pot.", "one\ntwo"])

    # The browser's reconnect comes after its retry delay, which the page's "Reconnecting…" does not wait for.
    for _ in range(300):
        if waiting:
            break
        page.wait_for_timeout(100)  # lets Playwright run the route handler meanwhile
    assert len(waiting) == 1
    waiting[0].fulfill(status=200, content_type="text/event-stream", body=parts[1])
    expect(reply).to_have_attribute("data-state", "done")
    expect(bubble.locator("pre code")).to_have_text("const heat = 3;\nconst time = 10;\n")
    expect(bubble.locator("p strong")).to_have_text("hot")
    # The rest once the reply ended, then how it ended (as the note under the reply says).
    expect(reply.locator(".note")).to_have_text("Reached the max tokens limit.")
    expect(announcer.locator("p")).to_have_text(
        [
            "Steps",
            "First, stir the pot.",
            "one\ntwo",
            "const heat = 3;\nconst time = 10;",
            "Serve hot.",
            "Reached the max tokens limit.",
        ]
    )
    # Nothing else in the page is a live region that the reply's drawing would set talking.
    live = page.evaluate("""() => [...document.querySelectorAll("[aria-live], [role=status], [role=log], [role=alert]")]
      .filter((element) => element.closest("#message-list") && !element.closest(".status"))
      .map((element) => element.outerHTML)""")
    assert live == []
