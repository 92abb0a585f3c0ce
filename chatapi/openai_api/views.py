"""/v1's routes: the model list and chat completions, streamed or not (the package's docstring says more)."""

import logging
import socket
import uuid
from datetime import datetime
from functools import partial

import gevent
import gevent.socket
from flask import Blueprint, current_app, request
from flask_smorest import abort

from .. import replies
from ..llm import prompt
from ..llm.catalog import UnknownModel
from ..llm.grammar import UnsupportedSchema, response_format_grammar
from ..llm.prompt import ContextLengthExceeded, Message
from ..llm.queue import ReplyService
from ..llm.remote import RemoteBackend, UpstreamError
from ..llm.reply import Reply, ReplyRequest
from ..llm.tool_calls import call_grammar, is_object_schema
from ..models import owner_id
from .schemas import bad_request, read_completion_request
from .store import store_exchange
from .wire import Completion

MODE = "openai"  # the replies' mode, as the metrics label them
OWNER = "chatapi"
# OpenAI's role -> the API's (the one role table's inverse), and a tool's result; system and developer messages make
# the system prompt.
ROLES = {**{openai: role for role, openai in prompt.ROLES.items()}, "tool": "Tool"}
JSON_FORMATS = ("json_object", "json_schema")
log = logging.getLogger(__name__)

bp = Blueprint("openai", __name__, url_prefix="/v1")


def prompt_parts(messages: list[dict]) -> tuple[str, list[Message]]:
    """The system prompt (the system and developer messages, joined) and the conversation."""
    system = "\n\n".join(m.get("content") or "" for m in messages if m["role"] not in ROLES)
    history = [
        Message(ROLES[m["role"]], m.get("content") or "", tuple(m.get("tool_calls") or ()), m.get("tool_call_id"))
        for m in messages
        if m["role"] in ROLES
    ]
    return system, history


def constraints(args: dict, service: ReplyService, model: str) -> tuple[str | None, tuple[dict, ...], dict | None]:
    """What a reply is made under: the grammar it is sampled under (a JSON response_format's, or one call of the
    tools a tool_choice of "required" or a function's name forces), the tools its prompt offers (none for "none"),
    and for a remote model server the parameters it is sent as given instead (it enforces them, or not, itself).
    A 400 before anything is generated for what cannot be enforced."""
    tools = args.get("tools") or []
    choice = args.get("tool_choice") or "auto"
    offered = () if choice == "none" else tuple(tools)
    forced = bool(tools) and choice not in ("auto", "none")
    json_format = (args.get("response_format") or {}).get("type") in JSON_FORMATS
    if (json_format or forced) and args.get("stop"):
        what = "a JSON response_format" if json_format else "a forced tool call"
        bad_request(f"stop cannot be given with {what}: a stop string could cut it short", "stop")
    if json_format and forced:
        bad_request("a forced tool call cannot be given with a JSON response_format", "tool_choice")
    if service.backend.name == RemoteBackend.name:
        given = {name: args[name] for name in ("tools", "tool_choice", "response_format") if args.get(name)}
        return None, offered, given
    try:
        grammar = response_format_grammar(args.get("response_format"))
    except UnsupportedSchema as exc:
        bad_request(str(exc), "response_format", "invalid_request_error")
    if forced:
        named = choice["function"]["name"] if isinstance(choice, dict) else None
        functions = [tool["function"] for tool in tools if named in (None, tool["function"]["name"])]
        for function in functions:
            if function.get("parameters") and not is_object_schema(function["parameters"]):
                message = f"the parameters of {function['name']!r} must be an object's schema (type object)"
                bad_request(message, "tools", "invalid_request_error")
        try:
            grammar = call_grammar(functions)
        except UnsupportedSchema as exc:
            bad_request(f"a function's parameters cannot be enforced: {exc}", "tools", "invalid_request_error")
    if grammar is not None:
        try:
            service.check_grammar(model, grammar)
        except UnsupportedSchema as exc:
            bad_request(str(exc), "tools" if forced else "response_format", "invalid_request_error")
    return grammar, offered, None


def tool_parameters(tools: tuple[dict, ...], args: dict, service: ReplyService) -> dict[str, dict | None]:
    """The tools whose calls are read from the reply's text, by name, with the parameters their arguments must
    validate against. None under a JSON response_format on the local backend: the grammar makes the reply that
    JSON, which may look like a call but is the answer. (A remote server's own tool calls are still read.)"""
    json_format = (args.get("response_format") or {}).get("type") in JSON_FORMATS
    if json_format and service.backend.name != RemoteBackend.name:
        return {}
    return {tool["function"]["name"]: tool["function"].get("parameters") for tool in tools}


def not_stored(reply: Reply) -> None:
    """An exchange with tools is not kept as a chat: a chat holds no tool calls or results."""


def listed_models(service: ReplyService) -> list[dict]:
    """Every model, as OpenAI lists models; 503 when a remote model server cannot say which it serves."""
    try:
        listing = service.model_listing()
    except UpstreamError as exc:
        current_app.logger.error("%s", exc)  # where and why; the client is told what
        abort(503, message=exc.public, code_name="model_not_ready")
    return [model_card(model) for model in listing]


def model_card(model: dict) -> dict:
    created = int(datetime.fromisoformat(model["created_at"]).timestamp()) if model.get("created_at") else 0
    return {"id": model["id"], "object": "model", "created": created, "owned_by": OWNER}


def resolve(service: ReplyService, name: str) -> str:
    """The id of the model a request names; 404 model_not_found for one this server does not have, 503 when a
    remote model server cannot say which it serves."""
    try:
        return service.resolve(name)
    except UnknownModel:
        abort(404, message=f"The model {name!r} does not exist", param="model", code_name="model_not_found")
    except UpstreamError as exc:
        current_app.logger.error("%s", exc)
        abort(503, message=exc.public, code_name="model_not_ready")


@bp.route("/models", methods=["GET"])
def list_models():
    """Every model this server has (loaded or not), as OpenAI lists models."""
    return {"object": "list", "data": listed_models(replies.service())}


@bp.route("/models/<path:model_id>", methods=["GET"])
def get_model(model_id: str):
    """A model by its id; 404 for one this server does not have."""
    found = next((m for m in listed_models(replies.service()) if m["id"] == model_id), None)
    if found is None:
        abort(404, message=f"The model {model_id!r} does not exist", param="model", code_name="model_not_found")
    return found


@bp.route("/chat/completions", methods=["POST"])
def create_chat_completion():
    """A chat completion of the messages given, as one `chat.completion` or a stream of chunks."""
    args = read_completion_request()
    service = replies.service()  # replies.start checks that the model asked for is ready
    model = resolve(service, args["model"])
    system_prompt, history = prompt_parts(args["messages"])
    grammar, tools, upstream = constraints(args, service, model)
    given = {
        "max_tokens": args.get("max_completion_tokens") or args.get("max_tokens"),
        "temperature": args.get("temperature"),
        "top_p": args.get("top_p"),
        "seed": args["seed"] % 2**32 if args.get("seed") is not None else None,  # the sampler's seed is 32-bit
        "grammar": grammar,
    }
    options = service.options_from({name: value for name, value in given.items() if value is not None})
    reply_request = ReplyRequest(
        uuid.uuid4(),  # no chat: a reply of its own
        MODE,
        tuple(history),
        system_prompt,
        options,
        save=not_stored
        if args.get("tools") or any(m.role == "Tool" or m.tool_calls for m in history)
        else partial(store_exchange, current_app._get_current_object(), owner_id(), system_prompt, history),
        stops=tuple(args.get("stop") or ()),
        by_prefix=True,  # its client resends the conversation: the cache is found by its tokens
        resumable=False,  # nobody can come back for it: forgotten once it ends, never shared through Redis
        cut=False,  # as OpenAI: the messages whole, or an error the client can act on
        model=model,
        tools=tools,
        upstream=upstream,
    )
    try:
        reply = replies.start(reply_request)
    except ContextLengthExceeded as exc:
        bad_request(
            f"This model's maximum context length is {service.context_window(model)} tokens. However, you requested"
            f" {exc.needed + exc.max_tokens} tokens ({exc.needed} in the messages, {exc.max_tokens} in the"
            " completion), with the older messages left out: the system prompt, the latest user message and the"
            " last message are kept whole. Please reduce the length of the messages or completion.",
            "messages",
            "context_length_exceeded",
        )
    completion = Completion(reply, model, tool_parameters(tools, args, service))
    if args.get("stream"):
        include_usage = bool((args.get("stream_options") or {}).get("include_usage"))
        return replies.event_stream_response(completion.chunks(service, include_usage))
    watcher = cancel_when_client_leaves(request.environ.get("gunicorn.socket"), service, reply)
    try:
        return completion.whole()
    finally:
        if watcher is not None:
            watcher.kill(block=False)


def cancel_when_client_leaves(client: socket.socket | None, service: ReplyService, reply: Reply):
    """A greenlet that cancels the reply as soon as its client hangs up, else None. A reply answered whole keeps its
    listener (the request) to the end, so without this it would run to max_tokens for nobody.

    Under gunicorn (its socket in the environ) nothing reads the connection while the reply is made: the request's
    body was read whole, and a client waits for its answer. So when it becomes readable, the client either closed
    it (a peek reads nothing) or sent something more (a pipelined request: the client is there, and the watch
    stops)."""
    if client is None:
        return None

    def watch():
        try:
            gevent.socket.wait_read(client.fileno())
            gone = client.recv(1, socket.MSG_PEEK) == b""
        except ValueError:  # TLS: no peeking; the reply runs its course
            return
        except OSError:  # reset by the peer
            gone = True
        if gone and not reply.finished:
            log.info("the client of chat completion %s left: its reply is stopped", reply.message_id)
            service.cancel(reply)

    return gevent.spawn(watch)
