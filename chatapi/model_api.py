"""Routes under /models: the models there are, a pull from Hugging Face and its progress, a model's removal.

Pulls (chatapi/pulls.py) run in a process of their own; their progress is read from their state files, so that any
worker answers for any pull, and so do `flask models pull`'s. Admins pull and remove models once accounts are on;
while they are off, whoever reaches the box does. On the remote backend (CHATAPI_LLM_BACKEND=openai) the models are
the upstream's: they are listed, never pulled or removed here.
"""

import time
from collections.abc import Iterator
from datetime import UTC, datetime

import marshmallow as ma
from flask import url_for
from flask_smorest import abort
from marshmallow import fields, validate

from . import auth, huggingface, pulls, replies
from .huggingface import PullError
from .llm.catalog import Catalog, UnknownModel
from .llm.sse import PING, event_text
from .openapi import Blueprint, ErrorSchema, JSONText
from .pulls import PullState
from .replies import event_stream_response
from .schemas import TIMESTAMP_FORMAT, RequestSchema, timestamp_text

bp = Blueprint("models", __name__, url_prefix="/models", description="Models: list, pull from Hugging Face, remove")

POLL_SECONDS = 0.25  # how often a progress stream reads the pull's state: at most 4 progress events a second
PING_SECONDS = 5.0  # a comment line when nothing changed for this long: a client that left is noticed
LOCATION = {"description": "the pull's progress_url", "schema": {"type": "string"}, "required": True}
REMOTE = "this server's models are its upstream's (CHATAPI_LLM_BACKEND=openai): pull and remove them there"


class CreatedAt(fields.Field):
    """When a model was pulled (or its file made), as the API writes times; the catalog gives ISO 8601 text."""

    def _serialize(self, value, attr, obj, **kwargs):
        if value is None:
            return None
        moment = datetime.fromisoformat(value) if isinstance(value, str) else value
        if moment.tzinfo is not None:
            moment = moment.astimezone(UTC).replace(tzinfo=None)
        return timestamp_text(moment)


class ModelSchema(ma.Schema):
    id = fields.String(required=True, metadata={"description": "REPO:QUANT for a pulled model; send it as `model`"})
    size = fields.Integer(required=True, allow_none=True, metadata={"description": "bytes on disk, every part"})
    quantization = fields.String(required=True, allow_none=True, metadata={"example": "Q4_K_M"})
    architecture = fields.String(required=True, allow_none=True, metadata={"example": "gemma3"})
    context_length = fields.Integer(
        required=True, allow_none=True, metadata={"description": "the context the model was trained for"}
    )
    chat_template = fields.Boolean(required=True, metadata={"description": "whether its GGUF has a chat template"})
    loaded = fields.Boolean(required=True, metadata={"description": "in memory now"})
    default = fields.Boolean(required=True, metadata={"description": "the server's default (CHATAPI_MODEL)"})
    source = fields.String(
        required=True, metadata={"description": "bundled, path (CHATAPI_MODEL names a file), hub (pulled), ..."}
    )
    repo = fields.String(required=True, allow_none=True, metadata={"description": "the Hugging Face repo it came from"})
    created_at = CreatedAt(required=True, allow_none=True, metadata=TIMESTAMP_FORMAT | {"type": "string"})


class PullSchema(RequestSchema):
    source = fields.String(
        required=True,
        validate=validate.Length(min=1, max=300),
        metadata={
            "description": "a Hugging Face repo and a quantization: REPO[:QUANT]",
            "example": "acme/tiny-GGUF:Q4_K_M",
        },
    )
    file = fields.String(
        validate=validate.Length(min=1, max=300),
        metadata={"description": "a .gguf file of the repo, instead of a quantization (the id: REPO:FILE-STEM)"},
    )

    @ma.validates_schema
    def names_a_model(self, data: dict, **kwargs) -> None:
        try:
            huggingface.parse_source(data["source"], data.get("file"))
        except huggingface.BadSource as error:
            raise ma.ValidationError(str(error), error.field) from None


class PullStartedSchema(ma.Schema):
    id = fields.String(required=True, metadata={"description": "the model's id once pulled"})
    status = fields.String(required=True, validate=validate.OneOf(["pulling"]))
    progress_url = fields.String(required=True, metadata={"description": "its progress, as Server-Sent Events"})


class PullProgressSchema(ma.Schema):
    downloaded = fields.Integer(required=True, metadata={"description": "bytes so far, every file"})
    total = fields.Integer(required=True, allow_none=True, metadata={"description": "bytes in all"})
    file = fields.String(required=True, allow_none=True, metadata={"description": "the file being downloaded"})


class PullDoneSchema(ma.Schema):
    model = fields.Nested(ModelSchema, required=True)


class PullErrorSchema(ma.Schema):
    message = fields.String(required=True, metadata={"description": "why, in one line; nothing was registered"})


def progress_event(name: str, data: type[ma.Schema]) -> type[ma.Schema]:
    return ma.Schema.from_dict(
        {"event": fields.String(required=True, validate=validate.OneOf([name])), "data": JSONText(data, required=True)},
        name=f"Pull{name.title()}Event",
    )


PROGRESS_RESPONSES = {
    "200": {
        "description": "The pull as Server-Sent Events: progress (at most 4 a second), then done or error; done at "
        "once for a model that is there.",
        "content": {
            "text/event-stream": {
                "schema": {
                    "oneOf": [
                        progress_event("progress", PullProgressSchema),
                        progress_event("done", PullDoneSchema),
                        progress_event("error", PullErrorSchema),
                    ]
                }
            }
        },
    },
}


def require_admin() -> None:
    """Admins only, once accounts are on; while they are off, whoever reaches the box is in charge."""
    person = auth.current_person()
    if person is not None and not person.admin:
        abort(403, message="only an admin pulls and removes models")


def local_catalog() -> Catalog:
    """The catalog of this server's own models; 409 on the remote backend, which has none."""
    catalog = replies.service().catalog
    if catalog is None:
        abort(409, message=REMOTE)
    return catalog


def listed(model_id: str) -> dict | None:
    return next((model for model in replies.service().model_listing() if model["id"] == model_id), None)


@bp.route("", methods=["GET"])
@bp.response(200, ModelSchema(many=True))
def list_models():
    """Every model this server can run: the bundled one, CHATAPI_MODEL's file, the pulled ones by id (on the remote
    backend, the upstream's)."""
    return replies.service().model_listing()


@bp.route("", methods=["POST"])
@bp.arguments(PullSchema)
@bp.response(202, PullStartedSchema, headers={"Location": LOCATION})
@bp.alt_response(403, description="Only an admin pulls models (once accounts are on).", schema=ErrorSchema)
@bp.alt_response(
    409,
    description="A model has this id, it is being pulled, or 3 pulls are running; or the models are the upstream's.",
    schema=ErrorSchema,
)
def pull_model(args):
    """Pull a GGUF model from Hugging Face (HF_ENDPOINT, HF_TOKEN): `REPO:QUANT` picks the file whose name carries
    the quantization. The pull runs on; follow it at `progress_url`."""
    require_admin()
    catalog = local_catalog()
    source = huggingface.parse_source(args["source"], args.get("file"))
    try:
        state = pulls.claim(catalog, source)
    except pulls.Conflict as error:
        abort(409, message=str(error))
    try:
        pulls.start(source, catalog.dir, state)
    except PullError as error:
        abort(503, message=str(error))
    url = url_for("models.pull_progress", model_id=source.id)
    return {"id": source.id, "status": "pulling", "progress_url": url}, 202, {"Location": url}


@bp.route("/<path:model_id>", methods=["GET"])
@bp.response(200, ModelSchema)
@bp.alt_response(404, response="NOT_FOUND")
def get_model(model_id: str):
    """One model."""
    model = listed(model_id)
    if model is None:
        abort(404, message=f"the model {model_id!r} does not exist")
    return model


@bp.route("/<path:model_id>/progress", methods=["GET"])
@bp.doc(responses=PROGRESS_RESPONSES)
@bp.alt_response(404, response="NOT_FOUND")
def pull_progress(model_id: str):
    """A pull's progress as Server-Sent Events, from any worker, also for `flask models pull`'s pulls."""
    service = replies.service()
    catalog = service.catalog
    state = PullState(catalog.dir, model_id) if catalog is not None else None
    known = state.read() if state is not None else None
    there = catalog is not None and catalog.get(model_id) is not None
    if not there and (known is None or known["status"] == "done"):
        abort(404, message=f"no model {model_id!r} is there or being pulled")
    return event_stream_response(progress_events(service, state))


def progress_events(service, state: PullState) -> Iterator[str]:
    """progress while the pull runs, then done (the model as GET /models/<id> shows it) or error."""
    shown, quiet_since = None, time.monotonic()
    while True:
        known = state.read()
        status = known["status"] if known is not None else "done"
        if status == "failed":
            yield event_text(None, {"message": known["message"]}, "error")
            return
        if status == "done":
            model = next((m for m in service.model_listing() if m["id"] == state.id), None)
            if model is None:
                yield event_text(None, {"message": f"{state.id} was removed"}, "error")
            else:
                yield event_text(None, PullDoneSchema().dump({"model": model}), "done")
            return
        progress = {"downloaded": known["downloaded"], "total": known["total"], "file": known["file"]}
        if progress != shown:
            yield event_text(None, progress, "progress")
            shown, quiet_since = progress, time.monotonic()
        elif time.monotonic() - quiet_since >= PING_SECONDS:
            yield PING
            quiet_since = time.monotonic()
        time.sleep(POLL_SECONDS)


@bp.route("/<path:model_id>", methods=["DELETE"])
@bp.response(204)
@bp.alt_response(403, description="Only an admin removes models (once accounts are on).", schema=ErrorSchema)
@bp.alt_response(404, response="NOT_FOUND")
@bp.alt_response(
    409,
    description="The server's default model, the bundled one, one being pulled, or the upstream's.",
    schema=ErrorSchema,
)
def remove_model(model_id: str):
    """Remove a pulled model and its files. Chats that name it answer 409 until they name another; replies it is
    writing finish first."""
    require_admin()
    try:
        pulls.remove(local_catalog(), model_id)
    except UnknownModel as error:
        abort(404, message=str(error))
    except pulls.Conflict as error:
        abort(409, message=str(error))
    replies.service().forget_model(model_id)
    return "", 204
