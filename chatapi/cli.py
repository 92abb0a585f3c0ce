"""The commands that manage the box itself: people and their keys (`flask users ...`, `flask keys ...`) and the
models (`flask models ...`).

Scriptable: a password comes from standard input when that is no terminal (one line), a new key alone on the last
line of standard output. Every refusal is one line on standard error and a non-zero exit, never a traceback.
"""

import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from functools import wraps

import click
import sqlalchemy as sa
from flask import Flask
from flask.cli import AppGroup

from . import huggingface, people, pulls, replies
from .extensions import db
from .huggingface import PullError
from .llm.catalog import Catalog, UnknownModel
from .people import ApiKey, User

users = AppGroup(
    "users",
    help="""Manage the people who may use the server (once one exists, every request must say who it is).

    A password is asked twice on a terminal, or read from the first line of standard input:

    \b
      flask users create alice --admin
      printf '%s\\n' "$PASSWORD" | flask users create bob
    """,
)
keys = AppGroup(
    "keys",
    help="""Manage people's API keys: a key is shown once, when it is made; the server keeps its digest.

    \b
      KEY=$(flask keys create alice --label laptop | tail -n 1)
      curl -H "Authorization: Bearer $KEY" http://127.0.0.1:5000/me
    """,
)
models = AppGroup(
    "models",
    help="""The models the server can run: pull one from Hugging Face, list them, remove one.

    A model's id is REPO:QUANT as typed (REPO:FILE-STEM when pulled by file); chats and requests name it as
    `model`. HF_TOKEN reads gated and private repos, HF_ENDPOINT names a mirror.

    \b
      flask models pull unsloth/gemma-3-1b-it-GGUF:Q4_K_M
      flask models pull unsloth/gemma-3-1b-it-GGUF gemma-3-1b-it-Q8_0.gguf
      flask models list
      flask models remove unsloth/gemma-3-1b-it-GGUF:Q4_K_M
    """,
)


def init_app(app: Flask) -> None:
    """Register `flask users`, `flask keys` and `flask models`."""
    app.cli.add_command(users)
    app.cli.add_command(keys)
    app.cli.add_command(models)


def refusals(command: Callable) -> Callable:
    """A service's ValueError (a bad or taken name, a bad password) and a database that refuses become one line on
    standard error and exit 1; nothing is committed."""

    @wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except ValueError as error:
            db.session.rollback()
            raise click.ClickException(str(error)) from None
        except sa.exc.IntegrityError:  # another process took the name between the check and the commit
            db.session.rollback()
            raise click.ClickException("the database refused the change (a name taken meanwhile?)") from None
        except sa.exc.DBAPIError as error:
            db.session.rollback()
            first = (str(error.orig).strip().splitlines() or [type(error.orig).__name__])[0]
            unmigrated = "no such table" in first or "does not exist" in first
            hint = " (is it migrated? flask db upgrade)" if unmigrated else ""
            raise click.ClickException(f"the database refused: {first}{hint}") from None

    return run


def stdin_is_terminal() -> bool:
    return sys.stdin is not None and sys.stdin.isatty()


def read_password() -> str:
    """Asked twice, unseen, on a terminal; else the first line of standard input (without its line ending)."""
    if stdin_is_terminal():
        return click.prompt("Password", hide_input=True, confirmation_prompt=True)
    line = sys.stdin.readline() if sys.stdin is not None else ""
    if not line:
        raise click.ClickException("no password on standard input: send it as one line (or run on a terminal)")
    return line.removesuffix("\n").removesuffix("\r")


def user_named(name: str) -> User:
    user = people.find_user(name)
    if user is None:
        raise click.ClickException(f"nobody is named {name!r}")
    return user


def when(moment: datetime | None) -> str:
    """A stored (naive UTC) time to the second, or "-" for none."""
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Columns left-aligned, two spaces apart."""
    rows = [list(header), *(list(row) for row in rows)]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = ("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows)
    return "\n".join(line.rstrip() for line in lines)


@users.command("create", short_help="Add a person; asks for their password.")
@click.argument("name")
@click.option("--admin", is_flag=True, help="May manage people (the API's /users routes).")
@refusals
def create_user(name: str, admin: bool) -> None:
    """Add the person NAME and ask for their password.

    On a terminal the password is asked twice and not shown; otherwise it is read from the first line of standard
    input: `printf '%s\\n' "$PASSWORD" | flask users create alice`.
    """
    user = people.create_user(name, read_password(), admin=admin)
    db.session.commit()
    click.echo(f"created {user.name} (id {user.id}{', admin' if user.admin else ''})")


@users.command("list", short_help="List everyone: id, name, admin, created, disabled.")
@refusals
def list_users() -> None:
    """Everyone, oldest first: id, name, admin, created and disabled (UTC)."""
    rows = db.session.scalars(sa.select(User).order_by(User.id))
    lines = ((str(u.id), u.name, "yes" if u.admin else "no", when(u.created_at), when(u.disabled_at)) for u in rows)
    click.echo(table(("id", "name", "admin", "created", "disabled"), lines))


@users.command("set-password", short_help="Give a person a new password.")
@click.argument("name")
@refusals
def set_password(name: str) -> None:
    """Give NAME a new password, asked as `users create` asks it; the old one stops working."""
    user = user_named(name)
    people.set_password(user, read_password())
    db.session.commit()
    click.echo(f"set a new password for {user.name}")


@users.command("disable", short_help="Stop a person: sign-in, keys and sessions.")
@click.argument("name")
@refusals
def disable_user(name: str) -> None:
    """Stop NAME from signing in; their sessions and keys stop working at once. Their chats stay."""
    user = user_named(name)
    if user.disabled_at is not None:
        click.echo(f"{user.name} was already disabled")
        return
    if user.admin and people.active_admins() <= 1:  # as the API refuses it: nobody could manage people any more
        raise click.ClickException(f"{user.name} is the last active admin: make another admin first (--admin)")
    people.disable(user)
    db.session.commit()
    click.echo(f"disabled {user.name}")


@keys.command("create", short_help="Make a key; printed alone on the last line.")
@click.argument("name")
@click.option("--label", default="", help="What the key is for, to tell it apart (100 characters at most).")
@refusals
def create_key(name: str, label: str) -> None:
    """Make a key for NAME and print it, alone on the last line of standard output: it is shown this once.

    `KEY=$(flask keys create alice --label laptop | tail -n 1)`; clients send it as `Authorization: Bearer KEY`.
    """
    if len(label.strip()) > people.MAX_LABEL_CHARS:
        raise click.ClickException(f"a label is {people.MAX_LABEL_CHARS} characters at most")
    user = user_named(name)
    if user.disabled_at is not None:
        raise click.ClickException(f"{user.name} is disabled: their keys would not work")
    key, secret = people.new_key(user, label)
    db.session.commit()
    click.echo(f"key {key.id} ({key.prefix}) for {user.name}; it is shown this once, keep it now:")
    click.echo(secret)


@keys.command("list", short_help="List a person's keys (never the secrets).")
@click.argument("name")
@refusals
def list_keys(name: str) -> None:
    """NAME's keys, oldest first: id, prefix, label, created, last used, revoked (UTC). Never the secrets: the
    server keeps only their digests."""
    user = user_named(name)
    rows = db.session.scalars(sa.select(ApiKey).where(ApiKey.user_id == user.id).order_by(ApiKey.id))
    lines = (
        (str(k.id), k.prefix, k.label or "-", when(k.created_at), when(k.last_used_at), when(k.revoked_at))
        for k in rows
    )
    click.echo(table(("id", "prefix", "label", "created", "last used", "revoked"), lines))


@keys.command("revoke", short_help="Revoke a key by its id: it stops at once.")
@click.argument("key_id")
@refusals
def revoke_key(key_id: str) -> None:
    """Revoke the key KEY_ID (its id in `flask keys list`): it stops working at once, and so do the sessions
    opened with it."""
    key = db.session.get(ApiKey, int(key_id)) if key_id.isascii() and key_id.isdigit() and len(key_id) < 19 else None
    if key is None:
        raise click.ClickException(f"no key has the id {key_id!r}")
    if key.revoked_at is not None:
        click.echo(f"key {key.id} ({key.prefix}) was already revoked")
        return
    people.revoke_key(key)
    db.session.commit()
    click.echo(f"revoked key {key.id} ({key.prefix})")


def local_catalog() -> Catalog:
    catalog = replies.service().catalog
    if catalog is None:
        raise click.ClickException("this server's models are its upstream's (CHATAPI_LLM_BACKEND=openai)")
    return catalog


def size_text(size: int | None) -> str:
    """Bytes as people read a model's size: 253 MB, 4.1 GB."""
    if not size:
        return "-"
    if size >= 10**9:
        return f"{size / 10**9:.1f} GB"
    return f"{size / 10**6:.0f} MB"


@models.command("pull", short_help="Download a GGUF model from Hugging Face.")
@click.argument("source")
@click.argument("file", required=False)
def pull_model(source: str, file: str | None) -> None:
    """Download SOURCE, a Hugging Face repo and a quantization (REPO:QUANT), or the repo's FILE, check its SHA-256
    against the hub's and its GGUF header, and register it as REPO:QUANT (REPO:FILE-STEM).

    The quantization picks the .gguf whose name carries it (every part of a split one); with none, the repo's only
    GGUF, else its Q4_K_M. A progress bar shows on a terminal. A pull that fails registers nothing.
    """
    catalog = local_catalog()
    try:
        wanted = huggingface.parse_source(source, file)
    except PullError as error:
        raise click.ClickException(str(error)) from None
    try:
        entry = pulls.run(wanted, catalog, pulls.claim(catalog, wanted))
    except PullError as error:
        raise click.ClickException(str(error)) from None
    except KeyboardInterrupt:
        raise click.ClickException("interrupted: nothing was registered") from None
    except Exception as error:  # never a traceback: what went wrong, in a line
        reason = f"{type(error).__name__}: {huggingface.first_line(error)}"
        raise click.ClickException(f"the pull failed: {reason}") from None
    template = "a chat template" if entry.chat_template else "no chat template"
    details = f"{size_text(entry.size)}, {entry.quantization or '?'}, context {entry.context_length or '?'}"
    click.echo(f"pulled {entry.id} ({details}, {template})")


@models.command("list", short_help="List the models: id, size, quantization, context, template, default.")
def list_models() -> None:
    """Every model the server can run, the default marked: id, size, quantization, trained context length, chat
    template or not, and where it comes from (bundled, path: CHATAPI_MODEL, hub: pulled). On the remote backend,
    the upstream's."""
    try:
        listing = replies.service().model_listing()
    except Exception as error:  # the remote backend's upstream, unreachable: in a line
        raise click.ClickException(f"the models cannot be listed: {huggingface.first_line(error)}") from None
    rows = (
        (
            m["id"],
            size_text(m["size"]),
            m["quantization"] or "-",
            str(m["context_length"] or "-"),
            "yes" if m["chat_template"] else "no",
            m["source"] or "-",
            "yes" if m["default"] else "",
        )
        for m in listing
    )
    click.echo(table(("id", "size", "quant", "context", "template", "source", "default"), rows))


@models.command("remove", short_help="Remove a pulled model and its files.")
@click.argument("model_id", metavar="ID")
def remove_model(model_id: str) -> None:
    """Remove the pulled model ID (as `flask models list` shows it) and delete its files. Chats that name it answer
    409 until they name another."""
    try:
        entry = pulls.remove(local_catalog(), model_id)
    except UnknownModel:
        raise click.ClickException(f"no model has the id {model_id!r} (flask models list)") from None
    except PullError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"removed {model_id} ({size_text(entry.size)})")
