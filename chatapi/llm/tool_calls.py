"""Tool calls as text: the one form a reply's tool calls take (`<tool_call>{"name", "arguments"}</tool_call>`, what the
fallback prompt asks for and what a forced call's grammar generates), the models' own syntaxes read back from a
reply's text (`parse`), and a remote model server's streamed `delta.tool_calls` turned into the one form
(`UpstreamToolCalls`).

Formats read: Qwen/Hermes `<tool_call>{json}</tool_call>`; Llama 3 `<|python_tag|>{json}` (or a call as Python) and a
bare `{"name", "parameters"}` object as the whole reply; Mistral `[TOOL_CALLS][{...}, ...]` (and its newer
`[TOOL_CALLS]name[ARGS]{...}`); Gemma's ```` ```tool_code fn(a=1) ``` ```` and ```` ```json {...} ``` ````. A call
counts only when it names one of the tools offered and its arguments are a JSON object (that JSON can write back: no
NaN or Infinity) valid against the tool's parameters; anything else stays text.
"""

import ast
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

import jsonschema

from .grammar import UnsupportedSchema, schema_grammar

OPEN, CLOSE = "<tool_call>", "</tool_call>"
FENCE = "```"  # Gemma's fences: ```tool_code, ```tool_call, ```json, or bare (FENCED)
# What may begin a tool call in a reply's text: while a stream's text may be the start of one, it is held back. The
# readers' own markers (READERS), so a streamed reply holds back whatever the whole reply would read as a call.
MARKERS = (OPEN, "<|python_tag|>", "[TOOL_CALLS]", FENCE)
# What reading a model's or a client's JSON or Python may raise beside a syntax error: too deep a nesting, too long a
# number
UNREADABLE = (ValueError, RecursionError, MemoryError)


@dataclass
class ToolCall:
    name: str
    arguments: dict

    def text(self) -> str:
        """The call in the one text form (ValueError for arguments JSON cannot hold: NaN, Infinity)."""
        call = json.dumps({"name": self.name, "arguments": self.arguments}, ensure_ascii=False, allow_nan=False)
        return f"{OPEN}{call}{CLOSE}"


def _valid(name: str, arguments: dict, tools: Mapping | set) -> ToolCall | None:
    """The call when its arguments can be written as JSON (no sets, bytes, NaN or Infinity from a Python call) and,
    `tools` mapping names to parameters, validate against the tool's parameters; else None."""
    try:
        json.dumps(arguments, allow_nan=False)
    except (TypeError, *UNREADABLE):
        return None
    schema = tools.get(name) if isinstance(tools, Mapping) else None
    if isinstance(schema, dict) and schema:
        try:
            if not jsonschema.validators.validator_for(schema)(schema).is_valid(arguments):
                return None
        except (jsonschema.exceptions.ValidationError, RecursionError):
            return None
        except Exception:  # noqa: BLE001 - parameters jsonschema cannot use (bad schema, unresolvable $ref): unchecked
            pass
    return ToolCall(name, arguments)


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
        except UNREADABLE:  # JSONDecodeError is a ValueError
            return None
        values.append(value)


def _call(value, names: Mapping | set) -> ToolCall | None:
    """A call from a JSON object {"name", "arguments" | "parameters"} (arguments an object or a JSON string of one),
    or from OpenAI's {"function": {...}} wrapping; None for anything else, a name not offered or arguments not
    valid (_valid)."""
    if not isinstance(value, dict):
        return None
    if isinstance(value.get("function"), dict):
        value = value["function"]
    name = value.get("name")
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except UNREADABLE:
            return None
    if not isinstance(name, str) or name not in names or not isinstance(arguments, dict):
        return None
    return _valid(name, arguments, names)


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
    except (SyntaxError, *UNREADABLE):
        return None
    nodes = tree.elts if isinstance(tree, ast.List | ast.Tuple) else [tree]
    calls = []
    for node in nodes:
        if not isinstance(node, ast.Call) or node.args:
            return None
        try:
            name = ast.unparse(node.func)  # brave_search.call -> "brave_search.call"
            arguments = {keyword.arg: ast.literal_eval(keyword.value) for keyword in node.keywords}
        except (SyntaxError, TypeError, *UNREADABLE):
            return None
        name = name.removesuffix(".call") if name not in names else name
        call = _valid(name, arguments, names) if name in names and None not in arguments else None
        if call is None:
            return None
        calls.append(call)
    return calls or None


FENCED = re.compile(rf"{FENCE}(tool_code|tool_call|json)?[ \t]*\n?(.*?)(?:{FENCE}|$)", re.S)


def _fenced(text: str, start: int, names: set[str]) -> tuple[list[ToolCall], int] | None:
    match = FENCED.match(text, start)
    if not match:
        return None
    body = match.group(2)
    calls = _calls(_json_values(body), names) or _python_calls(body, names)
    return (calls, match.end()) if calls else None


def _tagged(text: str, start: int, names: set[str]) -> tuple[list[ToolCall], int] | None:
    """Hermes: <tool_call>{...}</tool_call> (its closing tag may be cut at the reply's end). The JSON is read first and
    the closing tag expected after it: a string in the arguments may hold the tag."""
    decoder, values, at = json.JSONDecoder(), [], start + len(OPEN)
    while True:
        while at < len(text) and text[at] in " \t\r\n,;":
            at += 1
        if at == len(text) or text.startswith(CLOSE, at):
            break
        try:
            value, at = decoder.raw_decode(text, at)
        except UNREADABLE:
            return None
        values.append(value)
    calls = _calls(values, names)
    return (calls, min(at + len(CLOSE), len(text))) if calls else None


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


READERS = {OPEN: _tagged, "<|python_tag|>": _python_tag, "[TOOL_CALLS]": _mistral, FENCE: _fenced}
assert set(READERS) == set(MARKERS)


def parse(text: str, names: Mapping | set) -> tuple[str, list[ToolCall]]:
    """The reply's text less its tool calls, and the calls (of the tools named `names`, which when a mapping gives
    each tool's parameters, that its calls' arguments must validate against) in the order written."""
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
            if not isinstance(delta, dict):
                raise MalformedToolCall("a tool call's delta is not an object")
            index = delta.get("index")
            if index is None and len(self.calls) <= 1:  # some servers leave it out: the one call there is
                index = 0
            if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index <= len(self.calls):
                raise MalformedToolCall(f"a tool call's index is {index!r} after {len(self.calls)} calls")
            function = delta.get("function") or {}
            if not isinstance(function, dict):
                raise MalformedToolCall(f"tool call {index}'s function is not an object")
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
                text = ToolCall(call["name"], arguments).text() if isinstance(arguments, dict) else None
            except UNREADABLE:
                raise MalformedToolCall(f"tool call {index}'s arguments are not JSON (or nested too deeply)") from None
            if text is None:
                raise MalformedToolCall(f"tool call {index}'s arguments are not a JSON object")
            calls.append(text)
        return "".join(calls)


def is_object_schema(parameters) -> bool:
    """Whether a function's parameters are an object's schema (what OpenAI asks: arguments are an object)."""
    if not isinstance(parameters, dict):
        return False
    kind = parameters.get("type")
    return kind in ("object", ["object"]) or kind is None and "properties" in parameters


def _moved_refs(schema, base: str):
    """`schema` with its refs within itself ("#", "#/...") made refs to it at `base` ("#/$defs/x")."""
    if isinstance(schema, list):
        return [_moved_refs(item, base) for item in schema]
    if not isinstance(schema, dict):
        return schema
    moved = {key: _moved_refs(value, base) for key, value in schema.items()}
    ref = schema.get("$ref")
    if isinstance(ref, str) and (ref == "#" or ref.startswith("#/")):
        moved["$ref"] = base + ref[1:]
    return moved


def call_schema(functions: list[dict]) -> dict:
    """The JSON Schema of one call of any of `functions` (OpenAI's {"name", "parameters"}): {"name": its name,
    "arguments": valid against its parameters}. Parameters with refs (pydantic's $defs) are put under the root's
    $defs, their refs rewritten to point there: nested under "arguments", their own "#/..." would not resolve."""
    definitions, schemas = {}, []
    for index, function in enumerate(functions):
        parameters = function.get("parameters") or {"type": "object"}
        if '"$ref"' in json.dumps(parameters):
            definitions[f"parameters{index}"] = _moved_refs(parameters, f"#/$defs/parameters{index}")
            parameters = {"$ref": f"#/$defs/parameters{index}"}
        schemas.append(
            {
                "type": "object",
                "properties": {"name": {"const": function["name"]}, "arguments": parameters},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
        )
    schema = schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
    return {**schema, "$defs": definitions} if definitions else schema


def call_grammar(functions: list[dict]) -> str:
    """The grammar of one call of any of `functions` in the one text form; UnsupportedSchema when a function's
    parameters cannot be enforced."""
    try:
        schema = call_schema(functions)
    except RecursionError:
        raise UnsupportedSchema("a function's parameters are nested too deeply") from None
    return schema_grammar(schema, OPEN, CLOSE)
