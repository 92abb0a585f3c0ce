"""/v1/completions' request (OpenAI's legacy completions), read as schemas.py reads a chat completion's: JSON types
as they are, unknown fields ignored, the parameters it cannot serve refused with a 400 naming the `param`."""

import marshmallow as ma
from marshmallow import fields, validate

from .schemas import Boolean, Integer, Number, Stop, StreamOptionsSchema, load_request, storable_text

DEFAULT_MAX_TOKENS = 16  # OpenAI's, for this route


class Prompt(fields.Field):
    """`prompt`: a string, or a list of exactly one string (what the SDKs send for one prompt given as a list). Token
    arrays and several prompts (several choices) are refused; the text is bounded as a chat message is."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, list):
            if value and all(isinstance(item, int) and not isinstance(item, bool) for item in value):
                raise ma.ValidationError("token arrays are not supported: send the prompt as text")
            if value and all(isinstance(item, list) for item in value):
                raise ma.ValidationError("token arrays are not supported: send the prompt as text")
            if len(value) != 1:
                raise ma.ValidationError("exactly one prompt is supported")
            value = value[0]
        if not isinstance(value, str):
            raise ma.ValidationError("must be a string or a list of one string")
        if not value:
            raise ma.ValidationError("must not be empty")
        return storable_text(value)


class CompletionSchema(ma.Schema):
    """The parameters served; UNSUPPORTED lists those refused, every other field is ignored."""

    class Meta:
        unknown = ma.EXCLUDE  # user, presence_penalty, frequency_penalty, ...

    model = fields.String(required=True)
    prompt = Prompt(required=True)
    max_tokens = Integer(allow_none=True, validate=validate.Range(min=1))
    temperature = Number(allow_none=True, validate=validate.Range(min=0, max=2))
    top_p = Number(allow_none=True, validate=validate.Range(min=0, max=1))
    seed = Integer(allow_none=True)
    stop = Stop(allow_none=True)
    stream = Boolean(allow_none=True)
    stream_options = fields.Nested(StreamOptionsSchema, allow_none=True)
    echo = Boolean(allow_none=True)
    n = Integer(allow_none=True)
    # Read only to refuse them (see UNSUPPORTED).
    best_of = fields.Raw(allow_none=True)
    logprobs = fields.Raw(allow_none=True)
    suffix = fields.Raw(allow_none=True)
    logit_bias = fields.Raw(allow_none=True)


# Parameters that would change what the answer means, and the values of theirs that do not.
UNSUPPORTED = {
    "n": (lambda value: value in (None, 1), "only n=1 is supported"),
    "best_of": (lambda value: value in (None, 1), "only best_of=1 is supported"),
    "logprobs": (lambda value: value is None, "logprobs are not supported"),  # 0 still asks for the chosen token's
    "suffix": (lambda value: value in (None, ""), "suffix (insertion) is not supported"),
    "logit_bias": (lambda value: not value, "logit_bias is not supported"),
}


def read_text_completion_request() -> dict:
    """The request's parameters, validated, `max_tokens` defaulted to OpenAI's 16; 400 in OpenAI's shape naming
    the `param` at fault (415 for a body not sent as JSON)."""
    args = load_request(CompletionSchema(), UNSUPPORTED)
    if args.get("max_tokens") is None:
        args["max_tokens"] = DEFAULT_MAX_TOKENS
    return args
