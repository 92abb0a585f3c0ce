/* Markdown for Assistant messages: markdown-it parses (raw HTML stays text), highlight.js colours fenced code,
 * DOMPurify sanitises what comes out, and the server's citations become superscript [n] links to their
 * sources. No page state: text in, a DocumentFragment out, cheap enough to redo on every streamed token. */

import markdownit from "./vendor/markdown-it/markdown-it.js";
import DOMPurify from "./vendor/dompurify/purify.js";
import hljs from "./vendor/highlight.js/highlight.js";

// A citation's place in the text while it is parsed: its index in private-use digits between two "｜". To
// markdown-it "｜" is a symbol, so emphasis before it still closes ("**A fact.**｜…｜"), and to linkify a
// separator, so a web address before it ends there; Markdown gives it no meaning of its own.
const EDGE = "\uFF5C";
const ZERO = 0xe000;
const DIGIT = /[\uE000-\uE009]/g;
const MARKER = /\uFF5C([\uE000-\uE009]+)\uFF5C/g;

const md = markdownit({ html: false, linkify: true, breaks: true, highlight: codeBlock });
md.linkify.set({ fuzzyLink: false }); // only addresses with a scheme: "app.py" is a file name, not a link
// An image loads the moment it is shown: a reply (steered by a web page) could send the chat to any server
// in an image's address. Without the rule, ![text](url) is a "!" and a link the person may choose to open.
md.disable("image");
md.validateLink = linkable;
md.renderer.rules.code_block = (tokens, index) => `${codeBlock(tokens[index].content, "")}\n`;
md.core.ruler.before("text_join", "citations_as_written", citationsAsWritten);
md.core.ruler.push("alignment_classes", alignmentClasses);

// Only what markdown-it and highlight.js write is kept, and links only to web or mail addresses: the page's
// rules once more on the finished HTML, in case a library lets something through.
const SANITIZE = {
  ALLOWED_TAGS: ["p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "em", "strong", "s", "code", "pre",
    "blockquote", "ul", "ol", "li", "a", "table", "thead", "tbody", "tr", "th", "td", "span"],
  ALLOWED_ATTR: ["href", "title", "class", "start"],
  ALLOW_DATA_ATTR: false,
  ALLOW_ARIA_ATTR: false,
  ADD_URI_SAFE_ATTR: ["start"], // else its number is checked against ALLOWED_URI_REGEXP
  ALLOWED_URI_REGEXP: /^(?:https?|mailto):/i,
  RETURN_DOM_FRAGMENT: true,
};

/**
 * An Assistant message as Markdown: a DocumentFragment to put in its bubble (the bubble gets the class
 * `markdown`, see app.css).
 * `citations` ([{start, end, n}], character offsets into `text`, from the server) and `sources`
 * ([{n, title, url, snippet}]) add a superscript [n] link to source n after each cited span, or in place of an
 * "[n]" the model wrote inside it; in code and in link text the citation stays as the model wrote it.
 */
export function renderMarkdown(text, { citations = null, sources = null } = {}) {
  const raw = String(text ?? "").replace(DIGIT, "\uFFFD"); // nothing in the text can pass for a citation
  const bySource = new Map((Array.isArray(sources) ? sources : []).map((source) => [source.n, source]));
  const { source, marks } = withCitationMarkers(raw, citationMarks(raw, citations, bySource));
  const env = { marks }; // for the core rule citationsAsWritten
  const html = md.renderer.render(md.parse(source, env), md.options, env);
  const fragment = DOMPurify.sanitize(html, SANITIZE);
  dropLayoutNewlines(fragment);
  showCitations(fragment, marks, bySource);
  for (const link of fragment.querySelectorAll("a[href]")) {
    link.target = "_blank";
    link.rel = "noopener noreferrer";
  }
  for (const pre of fragment.querySelectorAll("pre")) addCopyButton(pre);
  return fragment;
}

/** A superscript [n] that links to source n when its address is a web address (else plain text). */
export function citationLink(source) {
  const mark = element("sup", "citation");
  const url = safeUrl(source.url);
  const link = element(url ? "a" : "span", "citation-link", `[${source.n}]`);
  const name = `Source ${source.n}: ${source.title || source.url || "untitled page"}`;
  link.title = name;
  if (url) {
    link.setAttribute("aria-label", name); // "Source 1: <title>", not "[1]"
    link.href = url.href;
    link.target = "_blank";
    link.rel = "noopener noreferrer";
  }
  mark.append(link);
  return mark;
}

/** A link target only for web addresses: never javascript:, data: and the like. */
export function safeUrl(value) {
  try {
    const url = new URL(String(value));
    return url.protocol === "http:" || url.protocol === "https:" ? url : null;
  } catch {
    return null;
  }
}

/** Where a Markdown link may point: web and mail addresses; nothing relative, no other scheme. */
function linkable(value) {
  try {
    return ["http:", "https:", "mailto:"].includes(new URL(value).protocol);
  } catch {
    return false;
  }
}

/** Each citation's place, in text order: over the "[n]" the model wrote inside the cited span (its last one),
 * else just after the span. Citations of sources the message does not have are left out. */
function citationMarks(text, citations, bySource) {
  const unit = utf16Offset(text);
  return (Array.isArray(citations) ? citations : [])
    .map((c) => ({ start: unit(c?.start), end: unit(c?.end), n: c?.n }))
    .filter((c) => Number.isInteger(c.start) && Number.isInteger(c.end) && c.end > 0 && bySource.has(c.n))
    .map((c) => {
      const written = `[${c.n}]`;
      const at = text.lastIndexOf(written, c.end - written.length);
      if (at >= 0 && at >= c.start) return { at, length: written.length, n: c.n };
      // After a table row's closing "|" the link would make a cell of its own: it goes in the last cell.
      const row = /(?:^|\n)[ \t]*\|[^\n]*?([ \t]*\|[ \t]*)$/.exec(text.slice(0, c.end));
      return { at: row ? c.end - row[1].length : c.end, length: 0, n: c.n };
    })
    .sort((a, b) => a.at - b.at);
}

/** The server's offsets count characters as Python does (code points: `message[start:end]`), a JavaScript
 * string counts UTF-16 units, two for an emoji: offset to index, undefined past the end. */
function utf16Offset(text) {
  const units = [0];
  if (/[\uD800-\uDFFF]/.test(text)) for (const char of text) units.push(units[units.length - 1] + char.length);
  return (offset) => {
    if (!Number.isInteger(offset) || offset < 0) return undefined;
    if (units.length === 1) return offset <= text.length ? offset : undefined;
    return units[offset];
  };
}

/** The text with a marker in each citation's place, and what each marker stands for. */
function withCitationMarkers(text, placed) {
  const marks = [];
  let source = "";
  let shown = 0;
  for (const mark of placed) {
    if (mark.at < shown) continue; // the same written marker cited twice
    source += text.slice(shown, mark.at) + marker(marks.length);
    marks.push({ n: mark.n, written: text.slice(mark.at, mark.at + mark.length) });
    shown = mark.at + mark.length;
  }
  return { source: source + text.slice(shown), marks };
}

function marker(index) {
  const digits = [...String(index)].map((digit) => String.fromCharCode(ZERO + Number(digit)));
  return `${EDGE}${digits.join("")}${EDGE}`;
}

function markerIndex(digits) {
  return Number([...digits].map((digit) => digit.charCodeAt(0) - ZERO).join(""));
}

/** Markers back to what the model wrote ("[n]", or nothing where a link was to be added). */
function restoreWritten(content, marks) {
  return content.replace(MARKER, (_, digits) => marks[markerIndex(digits)]?.written ?? "");
}

/** A core rule: code and link text show the citations as the model wrote them (a link inside code would be
 * copied with it, a link inside a link cannot be followed), and an entity such as &#xE000; makes no marker. */
function citationsAsWritten(state) {
  const { marks } = state.env;
  for (const token of state.tokens) {
    if (token.type === "fence" || token.type === "code_block") {
      token.content = restoreWritten(token.content, marks);
      token.info = restoreWritten(token.info, marks);
    }
    let inLink = 0;
    for (const child of token.children ?? []) {
      if (child.type === "link_open") inLink += 1;
      else if (child.type === "link_close") inLink -= 1;
      else if (child.type === "code_inline" || (child.type === "text" && inLink > 0)) {
        child.content = restoreWritten(child.content, marks);
      } else if (child.type === "text_special") child.content = child.content.replace(DIGIT, "\uFFFD");
    }
  }
}

/** A core rule: table cells' alignment as classes, as the page's policy refuses style attributes. */
function alignmentClasses(state) {
  for (const token of state.tokens) {
    const align = token.attrGet("style")?.match(/^text-align:(left|center|right)$/);
    if (align) {
      token.attrs = token.attrs.filter(([name]) => name !== "style");
      token.attrJoin("class", `align-${align[1]}`);
    }
  }
}

/** markdown-it puts a newline after each block tag, for people reading its HTML; between blocks it shows
 * nothing, but it would be part of the message's text (textContent, a copied selection). Text between
 * inline elements and in code is kept. */
function dropLayoutNewlines(fragment) {
  const containers = [fragment, ...fragment.querySelectorAll("ul, ol, blockquote, table, thead, tbody, tr")];
  for (const container of containers) {
    for (const child of [...container.childNodes]) {
      if (child.nodeType === 3 /* Node.TEXT_NODE */ && !child.data.trim()) child.remove();
    }
  }
}

/** Each marker left in the sanitised text becomes its citation link. */
function showCitations(fragment, marks, bySource) {
  const walker = fragment.ownerDocument.createTreeWalker(fragment, 4 /* NodeFilter.SHOW_TEXT */);
  const holding = [];
  while (walker.nextNode()) if (walker.currentNode.data.includes(EDGE)) holding.push(walker.currentNode);
  for (const node of holding) {
    const parts = [];
    let shown = 0;
    for (const found of node.data.matchAll(MARKER)) {
      const mark = marks[markerIndex(found[1])];
      if (!mark) continue;
      parts.push(node.data.slice(shown, found.index), citationLink(bySource.get(mark.n)));
      shown = found.index + found[0].length;
    }
    parts.push(node.data.slice(shown));
    node.replaceWith(...parts.filter((part) => part !== ""));
  }
}

/** A code block for markdown-it: highlighted when highlight.js knows its language (no guessing: guessing tries
 * every language on every streamed token), with the hljs class for the theme either way. */
function codeBlock(code, language) {
  const known = language && hljs.getLanguage(language);
  const html = known ? hljs.highlight(code, { language, ignoreIllegals: true }).value : md.utils.escapeHtml(code);
  const named = language ? ` language-${md.utils.escapeHtml(language)}` : "";
  return `<pre><code class="hljs${named}">${html}</code></pre>`;
}

/** A head over the code block: its language, and a button that copies the code. */
function addCopyButton(pre) {
  const code = pre.querySelector("code") ?? pre;
  const block = element("div", "code-block");
  const head = element("div", "code-head");
  const language = /(?:^|\s)language-(\S+)/.exec(code.className);
  head.append(element("span", "code-language", language ? language[1] : "code"));
  const button = element("button", "copy-code", "Copy code");
  button.type = "button";
  button.addEventListener("click", () => copyCode(button, code));
  head.append(button);
  pre.replaceWith(block);
  block.append(head, pre);
}

async function copyCode(button, code) {
  try {
    await navigator.clipboard.writeText(code.textContent);
    button.textContent = "Copied";
  } catch {
    // No clipboard (a page served over plain http to another host): the code is selected for Ctrl+C.
    code.ownerDocument.getSelection().selectAllChildren(code);
    button.textContent = "Press Ctrl+C";
  }
}

function element(tag, className, text) {
  const made = document.createElement(tag);
  made.className = className;
  if (text !== undefined) made.textContent = text;
  return made;
}
