"""Tool calls as text: the one form a reply's tool calls take (`<tool_call>{"name", "arguments"}</tool_call>`, what the
fallback prompt asks for and what a forced call's grammar generates), the models' own syntaxes read back from a
reply's text (`parse`), and a remote model server's streamed `delta.tool_calls` turned into the one form
(`UpstreamToolCalls`).

Formats read: Qwen/Hermes `<tool_call>{json}</tool_call>`; Llama 3 `<|python_tag|>{json}` (or a call as Python) and a
bare `{"name", "parameters"}` object as the whole reply; Mistral `[TOOL_CALLS][{...}, ...]` (and its newer
`[TOOL_CALLS]name[ARGS]{...}`); Gemma's ```` ```tool_code fn(a=1) ``` ```` and ```` ```json {...} ``` ````. A call
counts only when it names one of the tools offered and its arguments are a JSON object; anything else stays text.
"""

import ast
import json
import re
from dataclasses import dataclass

from .grammar import schema_grammar

OPEN, CLOSE = "<tool_call>", "</tool_call>"
# What may begin a tool call in a reply's text: while a stream's text may be the start of one, it is held back.
MARKERS = (OPEN, "<|python_tag|>", "[TOOL_CALLS]", "```tool_code", "```json")


@dataclass
class ToolCall:
    name: str
    arguments: dict

    def text(self) -> str:
        """The call in the one text form."""
        return f"{OPEN}{json.dumps({'name': self.name, 'arguments': self.arguments}, ensure_ascii=False)}{CLOSE}"


def _json_values(text: str) -> list:
    """The JSON values one after the other in `text` (separated by white space, commas or semicolons); None when
    something else is there."""
    decoder, values, at = json.JSONDecoder(), [], 0
    while True:
        while at < len(text) and text[at] in " \t\r\n,;":
            at += 1
        if at == len(text):
            return values
        try:
            value, at = decoder.raw_decode(text, at)
        except json.JSONDecodeError:
            return None
        values.append(value)


def _call(value, names: set[str]) -> ToolCall | None:
    """A call from a JSON object {"name", "arguments" | "parameters"} (arguments an object or a JSON string of one),
    or from OpenAI's {"function": {...}} wrapping; None for anything else or a name not offered."""
    if not isinstance(value, dict):
        return None
    if isinstance(value.get("function"), dict):
        value = value["function"]
    name = value.get("name")
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            return None
    if name not in names or not isinstance(arguments, dict):
        return None
    return ToolCall(name, arguments)


def _calls(values, names: set[str]) -> list[ToolCall] | None:
    """Every value a call (a list of them counts as its items), else None."""
    if values is None:
        return None
    flat = [item for value in values for item in (value if isinstance(value, list) else [value])]
    calls = [_call(value, names) for value in flat]
    return calls if calls and all(calls) else None


def _python_calls(text: str, names: set[str]) -> list[ToolCall] | None:
    """Calls written as Python, `fn(a=1, b="x")` (one a line or in a list): keyword arguments of literal values."""
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except (SyntaxError, ValueError):
        return None
    nodes = tree.elts if isinstance(tree, ast.List | ast.Tuple) else [tree]
    calls = []
    for node in nodes:
        if not isinstance(node, ast.Call) or node.args:
            return None
        name = ast.unparse(node.func)  # brave_search.call -> "brave_search.call"
        name = name.removesuffix(".call") if name not in names else name
        try:
            arguments = {keyword.arg: ast.literal_eval(keyword.value) for keyword in node.keywords}
        except (ValueError, SyntaxError, TypeError):
            return None
        if name not in names or None in arguments:
            return None
        calls.append(ToolCall(name, arguments))
    return calls or None


FENCED = re.compile(r"```(tool_code|tool_call|json)?[ \t]*\n?(.*?)(?:```|$)", re.S)


def _fenced(text: str, start: int, names: set[str]) -> tuple[list[ToolCall], int] | None:
    match = FENCED.match(text, start)
    if not match:
        return None
    body = match.group(2)
    calls = _calls(_json_values(body), names) or _python_calls(body, names)
    return (calls, match.end()) if calls else None


def _tagged(text: str, start: int, names: set[str]) -> tuple[list[ToolCall], int] | None:
    """Hermes: <tool_call>{...}</tool_call> (its closing tag may be cut at the reply's end)."""
    end = text.find(CLOSE, start)
    body = text[start + len(OPEN) : end if end >= 0 else len(text)]
    calls = _calls(_json_values(body), names)
    return (calls, end + len(CLOSE) if end >= 0 else len(text)) if calls else None


def _mistral(text: str, start: int, names: set[str]) -> tuple[list[ToolCall], int] | None:
    """[TOOL_CALLS][{...}, ...], or the newer [TOOL_CALLS]name[ARGS]{...} (repeated)."""
    body = text[start + len("[TOOL_CALLS]") :]
    calls = _calls(_json_values(body), names)
    if calls:
        return calls, len(text)
    calls = []
    for part in body.split("[TOOL_CALLS]"):
        name, found, arguments = part.partition("[ARGS]")
        call = _call({"name": name.strip(), "arguments": arguments.strip()}, names) if found else None
        if call is None:
            return None
        calls.append(call)
    return (calls, len(text)) if calls else None


def _python_tag(text: str, start: int, names: set[str]) -> tuple[list[ToolCall], int] | None:
    """Llama 3: <|python_tag|> then JSON calls (; between them) or a call as Python."""
    body = text[start + len("<|python_tag|>") :].replace("<|eom_id|>", "")
    calls = _calls(_json_values(body), names) or _python_calls(body, names)
    return (calls, len(text)) if calls else None


READERS = {OPEN: _tagged, "<|python_tag|>": _python_tag, "[TOOL_CALLS]": _mistral, "```": _fenced}


def parse(text: str, names: set[str]) -> tuple[str, list[ToolCall]]:
    """The reply's text less its tool calls, and the calls (of the tools named `names`) in the order written."""
    whole = text.strip()
    if whole.startswith("{"):  # Llama 3 and Gemma: a bare JSON call is the whole reply
        calls = _calls(_json_values(whole), names)
        if calls:
            return "", calls
    kept, calls, at = [], [], 0
    while True:
        found = [(text.find(marker, at), marker) for marker in READERS if text.find(marker, at) >= 0]
        if not found:
            break
        start, marker = min(found)
        read = READERS[marker](text, start, names)
        if read is None:
            kept.append(text[at : start + len(marker)])
            at = start + len(marker)
            continue
        kept.append(text[at:start])
        calls.extend(read[0])
        at = read[1]
    kept.append(text[at:])
    return "".join(kept).strip(), calls


def held_from(text: str, started: bool) -> int:
    """Where the part of a streamed reply's text that may be the start of a tool call begins (len(text) when none
    may): a marker, or a text's end that may be the start of one; the whole text when the reply so far is nothing
    but the opening of a bare JSON object (`started`: whether text came before it)."""
    if not started and text.lstrip().startswith("{"):
        return 0
    found = [text.find(marker) for marker in MARKERS if marker in text]
    if found:
        return min(found)
    for at in range(max(0, len(text) - max(map(len, MARKERS))), len(text)):
        if any(marker.startswith(text[at:]) for marker in MARKERS):
            return at
    return len(text)


class MalformedToolCall(ValueError):
    """A remote model server streamed a tool call that cannot be read; the message says how."""


class UpstreamToolCalls:
    """A remote model server's streamed `delta.tool_calls`, put together: each call's first delta has its index
    (the next one) and its function's name, the ones after it add fragments of its arguments; once the reply
    ends, the arguments must be a JSON object. MalformedToolCall otherwise."""

    def __init__(self):
        self.calls: list[dict] = []  # {"name", "arguments"} as the server sent them

    def add(self, deltas) -> None:
        if not isinstance(deltas, list):
            raise MalformedToolCall("tool_calls is not a list")
        for delta in deltas:
            index = delta.get("index") if isinstance(delta, dict) else None
            if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index <= len(self.calls):
                raise MalformedToolCall(f"a tool call's index is {index!r} after {len(self.calls)} calls")
            function = delta.get("function") or {}
            name, fragment = function.get("name"), function.get("arguments") or ""
            if index == len(self.calls):
                if not isinstance(name, str) or not name:
                    raise MalformedToolCall(f"tool call {index} has no name")
                self.calls.append({"name": name, "arguments": ""})
            elif name not in (None, "", self.calls[index]["name"]):
                raise MalformedToolCall(f"tool call {index} changed its name")
            if not isinstance(fragment, str):
                raise MalformedToolCall(f"tool call {index}'s arguments are not a string")
            self.calls[index]["arguments"] += fragment

    def text(self) -> str:
        """The calls in the one text form."""
        calls = []
        for index, call in enumerate(self.calls):
            try:
                arguments = json.loads(call["arguments"]) if call["arguments"].strip() else {}
            except json.JSONDecodeError:
                raise MalformedToolCall(f"tool call {index}'s arguments are not JSON") from None
            if not isinstance(arguments, dict):
                raise MalformedToolCall(f"tool call {index}'s arguments are not a JSON object")
            calls.append(ToolCall(call["name"], arguments).text())
        return "".join(calls)


def call_schema(functions: list[dict]) -> dict:
    """The JSON Schema of one call of any of `functions` (OpenAI's {"name", "parameters"}): {"name": its name,
    "arguments": valid against its parameters}."""
    schemas = [
        {
            "type": "object",
            "properties": {"name": {"const": f["name"]}, "arguments": f.get("parameters") or {"type": "object"}},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for f in functions
    ]
    return schemas[0] if len(schemas) == 1 else {"anyOf": schemas}


def call_grammar(functions: list[dict]) -> str:
    """The grammar of one call of any of `functions` in the one text form; UnsupportedSchema when a function's
    parameters cannot be enforced."""
    return schema_grammar(call_schema(functions), OPEN, CLOSE)
