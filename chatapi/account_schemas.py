"""marshmallow schemas of people, their keys and sessions (chatapi/accounts.py, chatapi/auth.py)."""

import marshmallow as ma
from marshmallow import fields, validate

from . import people
from .schemas import TIMESTAMP_FORMAT, RequestSchema, StorableString, Timestamp

NAME = {
    "description": "1 to 64 lower-case letters, digits, '.', '_' or '-' (upper case is taken as lower case)",
    "example": "alice",
}
PASSWORD = {"description": f"{people.MIN_PASSWORD_CHARS} to {people.MAX_PASSWORD_CHARS} characters"}


def well_formed_name(name: str) -> None:
    try:
        people.check_name(name)
    except ValueError as exc:
        raise ma.ValidationError(str(exc)) from exc


def name_field(**kwargs) -> fields.String:
    # The pattern is checked on the lower-cased name (people.check_name).
    return StorableString(validate=[validate.Length(min=1, max=64), well_formed_name], metadata=NAME, **kwargs)


def password_field(description: str = "", required: bool = True) -> fields.String:
    length = validate.Length(min=people.MIN_PASSWORD_CHARS, max=people.MAX_PASSWORD_CHARS)
    text = "; ".join(filter(None, [PASSWORD["description"], description]))
    return StorableString(required=required, validate=length, metadata={"description": text})


class SessionSchema(RequestSchema):
    """A name and a password, or an API key."""

    name = StorableString(validate=validate.Length(min=1, max=64), metadata=NAME)
    password = StorableString(validate=validate.Length(min=1, max=people.MAX_PASSWORD_CHARS))
    key = StorableString(validate=validate.Length(min=1, max=4096), metadata={"description": "an API key"})

    @ma.validates_schema
    def one_way(self, data, **kwargs):
        if "key" in data and ("name" in data or "password" in data):
            raise ma.ValidationError("send a key, or a name and a password: not both", "key")
        if "key" not in data:
            missing = [field for field in ("name", "password") if field not in data]
            if missing:
                raise ma.ValidationError({field: ["Missing data for required field."] for field in missing})


class PersonSchema(ma.Schema):
    id = fields.Integer(required=True)
    name = fields.String(required=True)
    admin = fields.Boolean(required=True)


class UserSchema(PersonSchema):
    created_at = Timestamp(required=True, metadata=TIMESTAMP_FORMAT)
    disabled_at = Timestamp(required=True, allow_none=True, metadata=TIMESTAMP_FORMAT)


class UserCreateSchema(RequestSchema):
    name = name_field(required=True)
    password = password_field()
    admin = fields.Boolean(load_default=False)


class UserUpdateSchema(RequestSchema):
    disabled = fields.Boolean(metadata={"description": "true: the person can no longer sign in; false: again"})
    admin = fields.Boolean()
    password = password_field("a new password; every session of the person ends", required=False)


class PasswordChangeSchema(RequestSchema):
    current_password = StorableString(
        validate=validate.Length(max=people.MAX_PASSWORD_CHARS),
        metadata={"description": "required when the person has a password"},
    )
    password = password_field()


class KeyCreateSchema(RequestSchema):
    label = StorableString(load_default="", validate=validate.Length(max=people.MAX_LABEL_CHARS))


class KeySchema(ma.Schema):
    id = fields.Integer(required=True)
    label = fields.String(required=True)
    prefix = fields.String(required=True, metadata={"description": "the key's first characters, to tell keys apart"})
    created_at = Timestamp(required=True, metadata=TIMESTAMP_FORMAT)
    last_used_at = Timestamp(required=True, allow_none=True, metadata=TIMESTAMP_FORMAT)
    revoked_at = Timestamp(required=True, allow_none=True, metadata=TIMESTAMP_FORMAT)


class NewKeySchema(KeySchema):
    key = fields.String(required=True, metadata={"description": "the key itself: shown this once, never again"})


class RevokedSchema(ma.Schema):
    id = fields.Integer(required=True)
    revoked = fields.Boolean(required=True)


class UserDeletedSchema(ma.Schema):
    id = fields.Integer(required=True)
    deleted = fields.Boolean(required=True)
