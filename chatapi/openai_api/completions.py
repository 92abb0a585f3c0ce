"""/v1/completions: OpenAI's legacy completions, for the tools that still use it. The prompt is read as it is
written, without the chat template or a system prompt (ReplyRequest.raw_prompt), and continued by the same reply
service as chat replies (the same queue, batching, stop strings and metrics, mode "openai"). Nothing is stored:
there is no conversation. The answer is one `text_completion` object, or a stream of them ending with [DONE]."""

import time
import uuid
from collections.abc import Iterator

from flask import request

from .. import replies
from ..llm import sse
from ..llm.prompt import ContextLengthExceeded
from ..llm.queue import ReplyService
from ..llm.reply import Reply, ReplyRequest
from .completion_schemas import read_text_completion_request
from .schemas import bad_request
from .views import MODE, bp, cancel_when_client_leaves, resolve
from .wire import DONE, FINISH_REASONS, error_event, finished_text, usage


def nothing_stored(reply: Reply) -> None:
    """A completion belongs to no chat: nothing to save (CHATAPI_OPENAI_STORE stores chat exchanges only)."""
    return None


@bp.route("/completions", methods=["POST"])
def create_completion():
    """A continuation of the prompt, as one `text_completion` or a stream of them."""
    args = read_text_completion_request()
    service = replies.service()  # replies.start checks that the model asked for is ready
    model = resolve(service, args["model"])
    given = {
        "max_tokens": args["max_tokens"],
        "temperature": args.get("temperature"),
        "top_p": args.get("top_p"),
        "seed": args["seed"] % 2**32 if args.get("seed") is not None else None,  # the sampler's seed is 32-bit
    }
    options = service.options_from({name: value for name, value in given.items() if value is not None})
    reply_request = ReplyRequest(
        uuid.uuid4(),  # no chat: a reply of its own
        MODE,
        (),
        "",
        options,
        save=nothing_stored,
        stops=tuple(args.get("stop") or ()),
        by_prefix=True,  # the cache is found by the prompt's tokens (a client resends a growing prompt)
        resumable=False,  # nobody can come back for it: forgotten once it ends
        cut=False,
        model=model,
        raw_prompt=args["prompt"],
    )
    try:
        reply = replies.start(reply_request)
    except ContextLengthExceeded as exc:
        bad_request(
            f"This model's maximum context length is {service.context_window(model)} tokens, however you requested"
            f" {exc.needed + exc.max_tokens} tokens ({exc.needed} in your prompt; {exc.max_tokens} for the"
            " completion). Please reduce your prompt; or completion length.",
            "prompt",
            "context_length_exceeded",
        )
    completion = TextCompletion(reply, model, args["prompt"] if args.get("echo") else "")
    if args.get("stream"):
        include_usage = bool((args.get("stream_options") or {}).get("include_usage"))
        return replies.event_stream_response(completion.chunks(service, include_usage))
    watcher = cancel_when_client_leaves(request.environ.get("gunicorn.socket"), service, reply)
    try:
        return completion.whole()
    finally:
        if watcher is not None:
            watcher.kill(block=False)


class TextCompletion:
    """One reply told as OpenAI tells a legacy completion: its text as the model wrote it (white space included),
    after the prompt when it is echoed."""

    def __init__(self, reply: Reply, model: str, echoed: str):
        self.reply = reply
        self.id = f"cmpl-{reply.message_id.hex}"
        self.created = int(time.time())
        self.model = model
        self.echoed = echoed  # the prompt with `echo`, else ""

    def texts_and_end(self) -> Iterator[tuple[str | None, dict | None]]:
        """From the reply's events: (text, None) for each piece, (None, None) for a ping, then (None, the `done` or
        `error` data)."""
        for record in self.reply.listen(records=True):
            if record is None:
                yield None, None
                continue
            event, data = record
            if event is None:
                if data["content"]:
                    yield data["content"], None
            elif event in ("done", "error"):
                yield None, {"event": event, **data}

    def whole(self) -> dict:
        """The finished reply as a `text_completion` (or its error in OpenAI's shape)."""
        text, end = finished_text(self.texts_and_end())
        finish_reason = FINISH_REASONS[end["finish_reason"]]
        choice = {"text": self.echoed + text, "index": 0, "logprobs": None, "finish_reason": finish_reason}
        return {**self.head(), "choices": [choice], "usage": usage(end)}

    def head(self) -> dict:
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model}

    def chunk(self, text: str, finish_reason: str | None = None, include_usage: bool = False) -> str:
        choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}
        return self.event({"choices": [choice], **({"usage": None} if include_usage else {})})

    def event(self, fields: dict) -> str:
        return sse.event_text(None, {**self.head(), **fields})  # no id: nobody can resume it

    def chunks(self, service: ReplyService, include_usage: bool) -> Iterator[str]:
        """The reply as OpenAI streams a completion: the echoed prompt (with `echo`), a chunk per text piece, one
        with the finish reason, the usage when asked, then [DONE]. A client that leaves cancels the reply at once."""
        try:
            if self.echoed:
                yield self.chunk(self.echoed, include_usage=include_usage)
            for text, end in self.texts_and_end():
                if text:
                    yield self.chunk(text, include_usage=include_usage)
                elif end is None:
                    yield sse.PING
                elif end["event"] == "error":
                    yield error_event(end)
                    return
                else:
                    yield self.chunk("", FINISH_REASONS[end["finish_reason"]], include_usage)
                    if include_usage:
                        yield self.event({"choices": [], "usage": usage(end)})
            yield DONE
        finally:
            if not self.reply.finished:
                service.cancel(self.reply)
