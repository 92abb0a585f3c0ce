"""The one place that turns a chat's history into the model's prompt, trimmed to fit."""

import json
from dataclasses import dataclass, replace

from jinja2 import TemplateError
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from .model import Model

# The one role table: a chat message's role (the API's, as stored) -> its role in a chat template and in OpenAI's
# messages. The API's roles are its keys (chatapi/models.py); /v1 reads OpenAI's roles through its inverse.
ROLES = {"Human": "user", "Assistant": "assistant"}
# A base model without a chat template continues a plain transcript; it stops at the next turn.
TRANSCRIPT_STOPS = ["\nHuman:", "\nAssistant:"]
ELLIPSIS = "… "
# Where internet mode's web sources go (CHATAPI_SOURCES_LAYOUT). In the latest Human turn, a chat's cached
# prefix (everything before that turn) is read once and kept; at the head of the system prompt, every
# internet turn reads the whole chat again.
LAYOUTS = ("sources-first", "question-first", "system")
MARK = "\ue000"  # a private-use character that marks where the latest Human message is in a rendered prompt


@dataclass
class Message:
    role: str  # "Human" or "Assistant"; /v1 also "Tool" (a tool's result)
    text: str
    tool_calls: tuple[dict, ...] = ()  # /v1: an Assistant message's tool calls (OpenAI's shape)
    tool_call_id: str | None = None  # /v1: the call a Tool message answers


# How tools are offered to a model whose chat template has no tool section (Gemma 3's): a section of the system
# prompt, and calls and results written back as text in the user's and the assistant's turns.
TOOLS_PROMPT = """You can call the functions below (each with its JSON Schema of parameters):
{functions}
To call one, answer with nothing but
<tool_call>{{"name": <function name>, "arguments": {{<its arguments>}}}}</tool_call>
(one such block a call). The result of each call comes back as <tool_response>...</tool_response>."""


def tool_functions(tools) -> list[dict]:
    return [tool["function"] for tool in tools]


def tools_as_text(system_prompt: str, messages: list[Message], tools) -> tuple[str, list[Message]]:
    """The fallback rendering: the tools as a section of the system prompt, an Assistant message's calls as
    <tool_call> blocks in its text, a tool's result as a <tool_response> block in a Human turn; consecutive turns of
    one role joined (a template such as Gemma's wants user and assistant turns in alternation)."""
    if tools:
        functions = "\n".join(json.dumps(f, ensure_ascii=False) for f in tool_functions(tools))
        system_prompt = f"{system_prompt.strip()}\n\n{TOOLS_PROMPT.format(functions=functions)}".strip()
    names = {call.get("id"): call["function"]["name"] for m in messages for call in m.tool_calls}
    turns: list[Message] = []
    for message in messages:
        if message.role == "Tool":
            name = json.dumps(names.get(message.tool_call_id, ""), ensure_ascii=False)
            role, text = "Human", f'<tool_response>{{"name": {name}}}\n{message.text.strip()}\n</tool_response>'
        else:
            calls = [tool_call_text(call) for call in message.tool_calls]
            role, text = message.role, "\n".join([message.text.strip(), *calls]).strip()
        if turns and turns[-1].role == role:
            turns[-1] = Message(role, f"{turns[-1].text}\n\n{text}")
        else:
            turns.append(Message(role, text))
    return system_prompt, turns


def tool_call_text(call: dict) -> str:
    """An OpenAI tool call written as the fallback asks for it."""
    return f"<tool_call>{json.dumps(native_call(call)['function'], ensure_ascii=False)}</tool_call>"


def native_call(call: dict) -> dict:
    """An OpenAI tool call with its arguments as an object, as chat templates write them (tojson)."""
    function = call["function"]
    try:
        arguments = json.loads(function.get("arguments") or "{}")
    except json.JSONDecodeError:
        arguments = function.get("arguments")
    return {**call, "function": {"name": function["name"], "arguments": arguments}}


def template_message(message: Message) -> dict:
    """A message as a chat template (or an OpenAI-compatible server) reads it, tool calls and results included."""
    if message.role == "Tool":
        return {"role": "tool", "content": message.text.strip(), "tool_call_id": message.tool_call_id}
    rendered = {"role": ROLES[message.role], "content": message.text.strip()}
    if message.tool_calls:
        rendered["tool_calls"] = list(message.tool_calls)
    return rendered


class ContextLengthExceeded(Exception):
    """What a prompt must keep whole does not fit its budget (a prompt built without cuts)."""

    def __init__(self, needed: int, budget: int):
        super().__init__(f"the prompt needs {needed} tokens, more than the {budget} it may have")
        self.needed = needed
        self.budget = budget
        self.max_tokens: int | None = None  # the reply's part of the window, beside the budget (set by the queue)


@dataclass
class Prompt:
    tokens: list[int]
    stop: list[str]
    truncated: int  # history messages left out or cut to fit the window (a cut system prompt counts as one)
    head: int = 0  # tokens before the latest Human message's text: what does not depend on web sources
    system_prompt: str = ""  # as rendered (cut to fit, maybe)
    messages: list[Message] | None = None  # as rendered (the oldest dropped and the kept ones cut to fit, maybe)


def render_transcript(system_prompt: str, messages: list[Message], tools=()) -> str:
    lines = [f"{m.role}: {m.text.strip()}" for m in messages]
    head = f"{system_prompt.strip()}\n\n" if system_prompt.strip() else ""
    return head + "\n".join(lines) + "\nAssistant:"


class TemplateRenderer:
    """Renders with the GGUF's own chat template; the system prompt goes where the template allows."""

    def __init__(self, model: Model):
        self.formatter = Jinja2ChatFormatter(
            template=model.chat_template, eos_token=model.eos, bos_token=model.bos, add_generation_prompt=True
        )
        self.system_role = self._renders_system_role()
        self.tool_section = self._renders_tools()
        self.stop = self.formatter(messages=[{"role": "user", "content": "u"}]).stop or []

    def _renders_system_role(self) -> bool:
        """Templates without a system role raise ("System role not supported") or drop it."""
        marker = "system-role-probe"
        try:
            text = self.formatter(messages=[{"role": "system", "content": marker}, {"role": "user", "content": "u"}])
        except (TemplateError, ValueError):
            return False
        return marker in text.prompt

    def _renders_tools(self) -> bool:
        """Whether the template writes the tools it is given (a tool section): a probe tool's name shows."""
        marker = "tool_section_probe"
        probe = [{"type": "function", "function": {"name": marker, "description": "d", "parameters": {}}}]
        try:
            text = self.formatter(messages=[{"role": "user", "content": "u"}], tools=probe)
        except (TemplateError, ValueError, TypeError, KeyError):
            return False
        return marker in text.prompt

    def __call__(self, system_prompt: str, messages: list[Message], tools=()) -> str:
        """The prompt; `tools` only when the template has a tool section (else they were made text already)."""
        chat = [template_message(m) for m in messages]
        for message in chat:
            if message.get("tool_calls"):
                message["tool_calls"] = [native_call(call) for call in message["tool_calls"]]
        system = system_prompt.strip()
        if system and self.system_role:
            chat.insert(0, {"role": "system", "content": system})
        elif system:
            first_user = next((m for m in chat if m["role"] == "user"), None)
            if first_user:
                first_user["content"] = f"{system}\n\n{first_user['content']}"
        return self.formatter(messages=chat, tools=list(tools) or None).prompt


class PromptBuilder:
    """Builds prompts for one model: its chat template when the GGUF has one, else a plain transcript."""

    def __init__(self, model: Model):
        self.model = model
        if model.chat_template:
            self.render = TemplateRenderer(model)
            self.stop = [s for s in self.render.stop if isinstance(s, str)]
        else:
            self.render = render_transcript
            self.stop = TRANSCRIPT_STOPS

    def tokens(self, text: str) -> list[int]:
        # A template writes its own <bos>; a transcript needs one added.
        add_bos = not text.startswith(self.model.bos)
        return self.model.tokenize(text, add_bos=add_bos)

    def raw(self, text: str, budget: int) -> Prompt:
        """A prompt of the text as it is (/v1/completions): no template, no system prompt and none of the template's
        stop strings; its control tokens (<start_of_turn>) read as such, and a BOS first when the model wants one
        (llama.cpp's add_bos) and the text has none. Never cut: ContextLengthExceeded beyond `budget` tokens."""
        add_bos = bool(self.model.weights.add_bos_token()) and not text.startswith(self.model.bos)
        tokens = self.model.tokenize(text, add_bos=add_bos)
        if len(tokens) > budget:
            raise ContextLengthExceeded(len(tokens), budget)
        return Prompt(tokens, [], 0)

    def build(
        self, system_prompt: str, history: list[Message], budget: int, cut: bool = True, tools=()
    ) -> Prompt:
        """The prompt for the next Assistant turn within `budget` tokens, offering `tools` (/v1's, OpenAI's shape):
        through the chat template when it has a tool section, else as text (tools_as_text).

        The oldest messages go first, on either side of the latest Human message; that one, the last message
        and the system prompt always stay. If they alone are too long, a system prompt that leaves the two
        messages less than half the budget is cut, keeping its beginning, and the messages are cut keeping
        their ends, sharing the room left (the shorter one whole when it takes less than its share). Without
        `cut` (a client that wants its messages whole or an error) that is a ContextLengthExceeded instead.
        """
        if not getattr(self.render, "tool_section", False):
            if tools or any(m.role == "Tool" or m.tool_calls for m in history):
                system_prompt, history = tools_as_text(system_prompt, history, tools)
            tools = ()
        latest = max(i for i, m in enumerate(history) if m.role == "Human")
        droppable = [i for i in range(len(history)) if i not in (latest, len(history) - 1)]  # oldest first
        dropped = 0
        messages = list(history)
        # Measured as it is read (one tokenization of the whole history: 15 ms for 3,000 tokens of Gemma's).
        prompt = self._prompt(system_prompt, messages, dropped, tools=tools)
        while len(prompt.tokens) > budget and dropped < len(droppable):
            # Drop as many of the oldest as the excess suggests (at least one), then measure again.
            excess = len(prompt.tokens) - budget
            freed = 0
            while freed < excess and dropped < len(droppable):
                freed += len(self.model.tokenize(history[droppable[dropped]].text)) + 3
                dropped += 1
            gone = set(droppable[:dropped])
            messages = [m for i, m in enumerate(history) if i not in gone]
            prompt = self._prompt(system_prompt, messages, dropped, tools=tools)
        if len(prompt.tokens) <= budget:
            return prompt
        if not cut:
            raise ContextLengthExceeded(len(prompt.tokens), budget)
        # Only the kept messages are left, and too long: cut.
        cut_system_prompt = self._cut_system_prompt(system_prompt, messages, budget)
        slack = 2  # a cut text tokenized again may take a token or two more than its share
        while True:
            cut_messages = self._cut_to_fit(cut_system_prompt, messages, budget, slack)
            truncated = dropped + sum(a != b for a, b in zip(messages, cut_messages, strict=True))
            prompt = self._prompt(cut_system_prompt, cut_messages, truncated + (cut_system_prompt != system_prompt))
            if len(prompt.tokens) <= budget or slack >= budget:
                return prompt
            slack += len(prompt.tokens) - budget

    def _prompt(self, system_prompt, messages, truncated: int, sources="", layout="", tools=()) -> Prompt:
        """The prompt tokenized in two parts, before and from the latest Human message's text, so that the
        first part is the same whatever web sources the second holds (and can be read before they come)."""
        before, spaces, question, after = self.split(system_prompt, messages, tools)
        if layout == "sources-first":
            question = f"{sources}\n\n{question}"
        elif layout == "question-first":
            question = f"{question}\n\n{sources}"
        head = self.tokens(before)
        tokens = head + self.model.tokenize(spaces + question + after)
        return Prompt(tokens, self.stop, truncated, len(head), system_prompt, messages)

    def split(self, system_prompt: str, messages: list[Message], tools=()) -> tuple[str, str, str, str]:
        """The rendered prompt as (what comes before the latest Human message's text, the spaces that lead
        to it, the text, the rest)."""
        latest = max(i for i, m in enumerate(messages) if m.role == "Human")
        # A message that holds the mark itself (a user may paste anything) loses it, to split in three only.
        marked = [replace(m, text=m.text.replace(MARK, "")) for m in messages]
        marked[latest] = Message("Human", MARK + marked[latest].text.strip() + MARK)
        before, question, after = self.render(system_prompt.replace(MARK, ""), marked, tools).split(MARK)
        # "Human: How" is read as "Human:" and " How", as the whole would be tokenized; not " " and "How".
        spaces = before[len(before.rstrip(" ")) :]
        return before[: len(before) - len(spaces)], spaces, question, after

    def with_sources(self, prompt: Prompt, sources: str, layout: str) -> Prompt:
        """The prompt with internet mode's web sources placed by `layout` (one of LAYOUTS); the same
        history as `prompt`, which was built with room for them."""
        if layout == "system":
            return self._prompt(f"{prompt.system_prompt}\n\n{sources}".strip(), prompt.messages, prompt.truncated)
        return self._prompt(prompt.system_prompt, prompt.messages, prompt.truncated, sources, layout)

    def _cut_system_prompt(self, system_prompt: str, messages: list[Message], budget: int) -> str:
        """The system prompt, shortened to its beginning when it would leave the messages less than half of the
        budget."""
        without = [Message(m.role, ELLIPSIS) for m in messages]
        over = len(self.tokens(self.render(system_prompt, without))) - budget // 2
        if over <= 0:
            return system_prompt
        system_tokens = self.model.tokenize(system_prompt)
        return self.model.detokenize(system_tokens[: max(0, len(system_tokens) - over - 2)]).rstrip() + " …"

    def _cut_to_fit(self, system_prompt: str, messages: list[Message], budget: int, slack: int) -> list[Message]:
        """The messages shortened to their ends so that the prompt fits, `slack` tokens to spare: they share the
        room, and one shorter than its share stays whole (the other takes what it leaves)."""
        shortened = [Message(m.role, ELLIPSIS) for m in messages]
        room = budget - len(self.tokens(self.render(system_prompt, shortened))) - slack
        texts = [self.model.tokenize(m.text) for m in messages]
        for count, index in enumerate(sorted(range(len(messages)), key=lambda i: len(texts[i]))):
            text = texts[index]
            share = max(0, room // (len(messages) - count))
            if len(text) <= share:
                shortened[index] = messages[index]
            else:
                kept = self.model.detokenize(text[-share:]) if share > 0 else ""
                shortened[index] = Message(messages[index].role, ELLIPSIS + kept.lstrip())
            room -= min(len(text), share)
        return shortened


@dataclass
class ChatPrompt:
    """A prompt as OpenAI's chat messages, for a server that applies its own chat template and counts the tokens
    itself (the remote backend)."""

    messages: list[dict]
    stop: list[str]
    truncated: int  # history messages left out or cut to fit the model's window (remote.fit_history)
    system_prompt: str = ""
    history: list[Message] | None = None
    tokens = None  # unknown here


def chat_messages(system_prompt: str, history: list[Message], sources: str = "", layout: str = "") -> ChatPrompt:
    """The history as chat messages: the system prompt first, and internet mode's sources placed as the local
    prompt places them (`layout`, one of LAYOUTS): in the latest Human message, before or after its text, or
    after the system prompt."""
    system = system_prompt.strip()
    if sources and layout == "system":
        system = f"{system}\n\n{sources}".strip()
    messages = [template_message(m) for m in history]
    if sources and layout != "system":
        latest = max(i for i, m in enumerate(history) if m.role == "Human")
        question = messages[latest]["content"]
        joined = f"{sources}\n\n{question}" if layout == "sources-first" else f"{question}\n\n{sources}"
        messages[latest] = {"role": "user", "content": joined}
    head = [{"role": "system", "content": system}] if system else []
    return ChatPrompt([*head, *messages], [], 0, system_prompt, history)


@dataclass
class TextPrompt:
    """A raw prompt (/v1/completions) as its text, for a server that tokenizes it itself (the remote backend, which
    sends it to the server's /completions)."""

    text: str
    stop: list[str]
    truncated: int = 0  # never cut
    tokens = None  # unknown here
