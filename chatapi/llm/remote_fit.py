"""What fits a remote model's window: its messages' tokens, counted by the model server's tokenizer where it has a
route for it (else estimated on the high side), what its chat template adds, and the history trimmed to fit as the
local PromptBuilder trims it. The remote backend (remote.py) uses it to build its prompts.
"""

import hashlib
import itertools
import logging
import math
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from .prompt import ELLIPSIS, ContextLengthExceeded, Message

COUNTS_KEPT = 4096  # token counts of texts remembered at most
BYTES_PER_TOKEN = 2.5  # of words' UTF-8, where the server cannot count a text's tokens (see estimate)
SLACK = 2  # tokens more per message than counted alone (see fit_history)
MORE = " …"  # ends a system prompt cut short
WORD = re.compile(r"[^\W\d_]+")  # a run of letters
LONE_SPACE = re.compile(r"\s(?![^\W\d_])")  # a space, tab or line break not followed by a letter
WINDOW_FIELDS = ("max_model_len", "context_length", "context_window", "n_ctx")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Template:
    """What a model's chat template adds to a prompt, beside its messages' texts."""

    fixed: int  # tokens of every prompt whatever its messages: a BOS, the generation prompt, a preamble
    per_message: int  # tokens of a message's turn markers
    system: int  # tokens a system prompt's place takes, beside its text

    def cost(self, count: Callable[[str], int], system: str, texts: list[str]) -> int:
        """A prompt's tokens, or a few more: each message is given SLACK more, as a text tokenized alone may take
        a token or two fewer than inside the prompt."""
        head = count(system) + self.system + SLACK if system else 0
        return self.fixed + head + sum(self.message(count, text) for text in texts)

    def message(self, count: Callable[[str], int], text: str) -> int:
        return count(text) + self.per_message + SLACK

    @classmethod
    def measure(cls, backend, model_id: str | None) -> "Template | None":
        """From the prompt tokens the server reports for three tiny chats (a one-token completion each, once per
        model): a user message; a system prompt and a user message; and those with two more messages. None when
        it reports none, and for a server without a tokenizer route: a hosted API, or a chatapi, which would keep
        the three chats."""
        if model_id is None:
            return None
        text = backend.tokenizer.count(model_id, PROBE_TEXT)
        if backend.tokenizer.route is None:
            return None
        counted = []
        for chat in PROBE_CHATS:
            counted.append(backend.prompt_tokens(model_id, chat))
            if counted[-1] is None:
                return None
        alone, with_system, longer = counted
        per_message = max(0, math.ceil((longer - with_system) / 2) - text)
        fixed = max(0, alone - per_message - text)
        template = cls(fixed, per_message, system=max(0, with_system - alone - text))
        log.info("the chat template of %r adds %s", model_id, template)
        return template


DEFAULT_TEMPLATE = Template(fixed=64, per_message=16, system=16)
PROBE_TEXT = "a"
PROBE_CHATS = [
    [{"role": role, "content": PROBE_TEXT} for role in roles]
    for roles in (("user",), ("system", "user"), ("system", "user", "assistant", "user"))
]


class Tokenizer:
    """Token counts from the model server's own tokenizer, found by trying the routes servers have for it (at
    the server's root, each answering {"tokens": [...]}): llama-cpp-python's POST /extras/tokenize {"input"},
    llama-server's POST /tokenize {"content"}, vLLM's POST /tokenize {"prompt"}. Without one, an `estimate`.
    The counts are remembered (a chat's messages are counted again for each of its replies)."""

    ROUTES = (
        ("/extras/tokenize", lambda model, text: {"model": model, "input": text}),
        ("/tokenize", lambda model, text: {"model": model, "content": text}),
        ("/tokenize", lambda model, text: {"model": model, "prompt": text, "add_special_tokens": False}),
    )
    NOT_HERE = (400, 404, 405, 422)  # answers that say a route is not this server's (others say nothing of it)

    def __init__(self, backend):  # the RemoteBackend whose server it asks (remote.py)
        self.backend = backend
        self.route: tuple | None = None  # the route that answered, once one has
        self.absent = False  # every route answered that it is not there: estimates only
        self.counts: OrderedDict[tuple, int] = OrderedDict()  # (model, text's digest) -> tokens, COUNTS_KEPT at most

    def count(self, model_id: str | None, text: str) -> int:
        if not text:
            return 0
        key = (model_id, hashlib.blake2b(text.encode(), digest_size=16).digest())
        try:
            self.counts.move_to_end(key)
            return self.counts[key]
        except KeyError:  # not counted yet (or just dropped by internet mode's thread, which counts too)
            pass
        counted = self.ask(model_id, text)
        if counted is None:
            return estimate(text)  # not remembered: the server may count it next time
        self.counts[key] = counted
        if len(self.counts) > COUNTS_KEPT:
            self.counts.popitem(last=False)
        return counted

    def ask(self, model_id: str | None, text: str) -> int | None:
        """The server's count, or None."""
        if self.absent or model_id is None:
            return None
        for route in [self.route] if self.route else self.ROUTES:
            path, body = route
            status, answered = self.backend.side_request("POST", path, json=body(model_id, text))
            tokens = answered.get("tokens") if isinstance(answered, dict) else None
            if isinstance(tokens, list):
                if self.route is None:
                    log.info("the model server at %s counts tokens at %s", self.backend.shown_url, path)
                self.route = route
                if number(answered.get("max_model_len")):  # vLLM's
                    self.backend.models.remember_window(model_id, answered["max_model_len"], said="its /tokenize")
                return len(tokens)
            if status not in self.NOT_HERE:
                return None  # no answer (down, 401, 503), or an odd one: no verdict on the route
        if self.route is None:
            log.info(
                "the model server at %s has no tokenizer route: token counts are estimated", self.backend.shown_url
            )
            self.absent = True
        return None


def estimate(text: str) -> int:
    """A text's tokens where the server cannot count them, on the high side: a token for each digit, mark
    (punctuation, symbol, emoji) and space that does not lead a word, which many tokenizers (Gemma's, Llama 2's,
    Mistral's) take one by one; and for each word, one for each BYTES_PER_TOKEN bytes of its UTF-8, at least one,
    where today's tokenizers take 4 or more bytes a token on English words, 3 or more on Cyrillic and about 3 on
    Chinese or Japanese (a character a token). Over-counting leaves out a little more history than needed;
    under-counting would send a prompt the server refuses."""
    singles = sum(1 for c in text if c.isdigit() or not (c.isalnum() or c.isspace()))
    return (
        singles
        + len(LONE_SPACE.findall(text))
        + sum(math.ceil(len(w.encode()) / BYTES_PER_TOKEN) for w in WORD.findall(text))
    )


def fit_history(
    system_prompt: str,
    history: list[Message],
    budget: int,
    cut: bool,
    count: Callable[[str], int],
    template: Template,
) -> tuple[str, list[Message], int]:
    """The system prompt and the messages of `history` that fit `budget` tokens, and how many messages were left
    out or cut (a cut system prompt counts as one), as the local PromptBuilder.build keeps them: the oldest go
    first, on either side of the latest Human message; that one, the last message and the system prompt always
    stay. If they alone are too long, a system prompt that leaves the messages less than half the budget is cut,
    keeping its beginning, and the messages are cut keeping their ends, sharing the room left (the shorter one
    whole when it takes less than its share). Without `cut` that is a ContextLengthExceeded instead.

    `count` gives a text's tokens, `template` what the chat template adds. Only the messages that might fit are
    counted, the newest first."""
    latest = max(i for i, m in enumerate(history) if m.role == "Human")
    always = sorted({latest, len(history) - 1})
    system = system_prompt.strip()
    needed = template.cost(count, system, [history[i].text.strip() for i in always])
    kept = set(always)
    for i in reversed([i for i in range(len(history)) if i not in kept]):  # the newest first: the oldest go
        more = template.message(count, history[i].text.strip())
        if needed + more > budget:
            break
        needed += more
        kept.add(i)
    dropped = len(history) - len(kept)
    messages = [m for i, m in enumerate(history) if i in kept]
    if needed <= budget:
        return system_prompt, messages, dropped
    if not cut:
        raise ContextLengthExceeded(needed, budget)
    # Only the messages kept always are left, and too long: cut.
    stubs = [ELLIPSIS.strip()] * len(messages)  # the messages cut to nothing
    cut_system = system_prompt
    if system and template.cost(count, system, stubs) > budget // 2:
        room = budget // 2 - template.cost(count, MORE.strip(), stubs)
        cut_system = (shorten(system, room, count, keep_end=False).rstrip() + MORE).strip()
    room = budget - template.cost(count, cut_system.strip(), stubs)
    texts = [m.text.strip() for m in messages]
    sizes = [count(text) for text in texts]
    shortened = list(messages)
    for done, index in enumerate(sorted(range(len(messages)), key=lambda i: sizes[i])):
        share = max(0, room // (len(messages) - done))
        if sizes[index] > share:
            shortened[index] = Message(messages[index].role, ELLIPSIS + shorten(texts[index], share, count).lstrip())
        room -= min(sizes[index], share)
    truncated = dropped + sum(a != b for a, b in zip(messages, shortened, strict=True)) + (cut_system != system_prompt)
    return cut_system, shortened, truncated


def shorten(text: str, tokens: int, count: Callable[[str], int], keep_end: bool = True) -> str:
    """The longest end (or beginning) of `text` that `count` finds within `tokens`: sized by characters in
    proportion, then measured again."""
    have = count(text)
    if have <= max(0, tokens):
        return text
    size = len(text) * max(0, tokens) // have
    while size > 0:
        piece = text[len(text) - size :] if keep_end else text[:size]
        got = count(piece)
        if got <= tokens:
            return piece
        size = min(size - 1, size * tokens // got)
    return ""


def window_of(model: dict | None) -> int | None:
    """A model's context window as the server lists it, if it does: vLLM's `max_model_len`, others'
    `context_length`, `context_window` or `n_ctx` (at the top or in its `meta`). Not llama-server's
    `meta.n_ctx_train`: the server's own window may be smaller."""
    if not model:
        return None
    meta = model.get("meta") if isinstance(model.get("meta"), dict) else {}
    for place, field in itertools.product((model, meta), WINDOW_FIELDS):
        if number(place.get(field)):
            return number(place.get(field))
    return None


def number(value) -> int | None:
    """A positive integer the server sent, else None (a missing field, a null, a string)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None
