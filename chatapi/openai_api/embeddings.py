"""/v1/embeddings: a normalised vector per input, as OpenAI answers it.

The local backend embeds with chatapi/llm/embeddings.py's model (CHATAPI_EMBEDDING_MODEL, else the default chat
model), loaded at the first request and kept; its work runs in a real thread of the hub's pool, so the event loop
and the chat model's thread go on meanwhile. The remote backend sends the request on to its server's /v1/embeddings.
"""

import base64

import gevent
import marshmallow as ma
import numpy as np
from flask import current_app, request
from flask_smorest import abort
from marshmallow import fields, validate

from .. import replies
from ..llm.catalog import UnknownModel
from ..llm.embeddings import Embedder, InputTooLong, InvalidToken, TooManyTokens, WrongDimensions
from ..llm.model import NotGGUF
from ..openapi import json_object
from .schemas import Integer, bad_request, param_path, storable_text
from .views import bp, resolve

MAX_INPUTS = 2048  # as OpenAI allows
# One process's embedders, by reply service and setting (the tests make several apps of the same settings).
_embedders: dict[tuple, Embedder] = {}


def token_list(value) -> bool:
    return isinstance(value, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in value)


class EmbeddingInput(fields.Field):
    """`input`: a string, a list of strings, a list of token ids (one input) or a list of token lists; always a list
    of inputs once read (strings and token lists), at most MAX_INPUTS, none empty."""

    def _deserialize(self, value, attr, data, **kwargs):
        single = isinstance(value, str) or (isinstance(value, list) and value and token_list(value))
        if single:
            inputs = [value]
        elif isinstance(value, list):
            inputs = value
        else:
            raise ma.ValidationError("must be a string, a list of strings, or a list of token lists")
        if not inputs:
            raise ma.ValidationError("must hold at least one input")
        if len(inputs) > MAX_INPUTS:
            raise ma.ValidationError(f"at most {MAX_INPUTS} inputs")
        for index, given in enumerate(inputs):
            try:
                inputs[index] = one_input(given)
            except ma.ValidationError as error:
                raise ma.ValidationError(error.messages if single else {index: error.messages}) from error
        return inputs


def one_input(given):
    """A string or a token list, not empty."""
    if isinstance(given, str):
        given = storable_text(given)
    elif not token_list(given):
        raise ma.ValidationError("must be a string or a list of token ids")
    if not given:
        raise ma.ValidationError("must not be empty")
    return given


class EmbeddingSchema(ma.Schema):
    class Meta:
        unknown = ma.EXCLUDE  # user, ...

    model = fields.String(required=True)
    input = EmbeddingInput(required=True)
    encoding_format = fields.String(allow_none=True, validate=validate.OneOf(["float", "base64"]))
    dimensions = Integer(allow_none=True, validate=validate.Range(min=1))


def read_embedding_request() -> dict:
    try:
        return EmbeddingSchema().load(json_object(request))
    except ma.ValidationError as error:
        param, message = param_path(error.messages)
        bad_request(f"{param}: {message}", param)


def embedder() -> Embedder:
    """The current app's embedding model (not loaded until it embeds)."""
    service, config = replies.service(), current_app.config
    key = (id(service), config["CHATAPI_EMBEDDING_MODEL"], config["CHATAPI_EMBEDDING_N_CTX"])
    if key not in _embedders:
        settings = service.settings
        _embedders[key] = Embedder(service.catalog, key[1], settings.model_cache, key[2], settings.n_threads)
    return _embedders[key]


@bp.route("/embeddings", methods=["POST"])
def create_embeddings():
    """A normalised vector per input, and the tokens read."""
    args = read_embedding_request()
    service = replies.service()
    model = resolve(service, args["model"])  # 404 for a model this server does not have, as chat completions
    if service.backend.name != "local":
        return forwarded(service, args, model)
    inputs = args["input"]
    given = request.get_json()["input"]
    single = isinstance(given, str) or token_list(given)  # one input: its errors name `input`
    embedding_model = embedder()
    try:
        with embedding_model.turn:
            model_id, vectors, tokens = gevent.get_hub().threadpool.apply(
                embedding_model.embed, (inputs, args.get("dimensions"))
            )
    except (InputTooLong, InvalidToken) as exc:
        param = "input" if single else f"input[{exc.index}]"
        code = "context_length_exceeded" if isinstance(exc, InputTooLong) else None
        bad_request(f"{param} {exc}", param, code)
    except TooManyTokens as exc:
        bad_request(str(exc), "input")
    except WrongDimensions as exc:
        bad_request(str(exc), "dimensions", "unsupported_parameter")
    except (UnknownModel, NotGGUF) as exc:
        current_app.logger.error("the embedding model cannot be loaded: %s", exc)
        abort(503, message=f"the embedding model cannot be loaded: {exc}", code_name="model_not_ready")
    as_base64 = args.get("encoding_format") == "base64"
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": index, "embedding": encoded(vector, as_base64)}
            for index, vector in enumerate(vectors)
        ],
        "model": model_id,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def encoded(vector: np.ndarray, as_base64: bool) -> list[float] | str:
    """A vector as OpenAI sends it: a list of numbers, or base64 of its little-endian float32s."""
    if as_base64:
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


def forwarded(service, args: dict, model: str | None):
    """The remote backend: the request sent on to the model server's /v1/embeddings (CHATAPI_EMBEDDING_MODEL, else
    the model named), its answer returned as it is; 502 when it refuses, 503 when it does not answer."""
    body = {"model": current_app.config["CHATAPI_EMBEDDING_MODEL"] or model, "input": request.get_json()["input"]}
    for name in ("encoding_format", "dimensions"):
        if args.get(name) is not None:
            body[name] = args[name]
    status, answer = service.backend.side_request("POST", "/v1/embeddings", json=body)
    if status is None:
        abort(503, message="the model server does not answer", code_name="model_not_ready")
    if status != 200 or not isinstance(answer, dict) or not isinstance(answer.get("data"), list):
        abort(502, message=f"the model server answered {status} to POST /v1/embeddings", code_name="upstream_error")
    return answer
