"""Hugging Face as a pull sees it (chatapi/pulls.py): what a source names, which files of a repo it picks, the hub's
errors in one line, a downloaded file checked, and huggingface_hub's notes beside the files it downloads.

A source is `REPO[:QUANT]` or a repo and one of its files. The quantization picks the repo's `.gguf` whose name
carries it as a whole token, case-insensitively: every part of a split GGUF (`-00001-of-00003`), never an `mmproj`
file (a vision tower). A file's SHA-256 is checked against the hub's (its LFS pointer's; a file kept in git, its
blob id).

HF_ENDPOINT is read at each call (huggingface_hub reads it once, when it is imported, so it is passed explicitly);
HF_TOKEN and HF_HOME are huggingface_hub's to read.
"""

import contextlib
import errno
import hashlib
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .llm.catalog import MAX_ID_LENGTH

DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_QUANT = "Q4_K_M"  # what llama.cpp's -hf and Ollama pick when none is named
REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
QUANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,49}")
# What a source may start with, as people copy it from Ollama (`hf.co/REPO:QUANT`) or from the hub's page.
SOURCE_PREFIXES = re.compile(r"^(?:https?://)?(?:hf\.co|huggingface\.co)/", re.IGNORECASE)
SPLIT_PART = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)
STALE_SECONDS = 60  # a partial download untouched this long is a dead process's: nobody is writing it
CHUNK = 1 << 20


class PullError(Exception):
    """A pull that cannot be done, in one line that says why (the CLI's `Error:` line, the API's error event)."""


class BadSource(PullError):
    """What was asked for names no model: `field` says which part (`source` or `file`), for the API's 422."""

    def __init__(self, message: str, field: str = "source"):
        super().__init__(message)
        self.field = field


# What to pull


@dataclass(frozen=True)
class Source:
    """A repo and a quantization (`REPO[:QUANT]`, QUANT None: the repo's only GGUF, else its Q4_K_M), or a repo and
    one of its files."""

    repo: str
    quant: str | None = None
    file: str | None = None

    @property
    def id(self) -> str:
        """The model's id: `REPO:QUANT` as typed, `REPO:FILE-STEM` for a file, `REPO` when neither was named."""
        if self.file is not None:
            stem = re.sub(r"\s+", "-", Path(model_key(self.file)).stem)
            return f"{self.repo}:{stem}"
        return f"{self.repo}:{self.quant}" if self.quant else self.repo

    def __str__(self) -> str:
        return f"{self.repo} {self.file}" if self.file is not None else self.id


def parse_source(text: str, file: str | None = None) -> Source:
    """`REPO[:QUANT]` (also `hf.co/REPO:QUANT`), or a bare REPO with `file`; PullError saying what is wrong."""
    text = SOURCE_PREFIXES.sub("", text.strip())
    repo, _, quant = text.partition(":")
    if not REPO.fullmatch(repo):
        raise BadSource(f"{repo!r} is not a Hugging Face repo: write OWNER/NAME, e.g. unsloth/gemma-3-1b-it-GGUF")
    if file is not None:
        if quant:
            raise BadSource("name a quantization (REPO:QUANT) or a file, not both")
        file = file.strip().lstrip("/")
        if not file.lower().endswith(".gguf") or ".." in file.split("/"):
            raise BadSource(f"{file!r} is not a .gguf file of the repo", "file")
        source = Source(repo, file=file)
    else:
        if quant and not QUANT.fullmatch(quant):
            raise BadSource(f"{quant!r} is not a quantization: write one as the hub's file names do, e.g. Q4_K_M")
        source = Source(repo, quant or None)
    if len(source.id) > MAX_ID_LENGTH:
        raise BadSource(f"the model's id would be longer than {MAX_ID_LENGTH} characters")
    return source


def model_key(name: str) -> str:
    """The name a split GGUF's parts share (`m-00002-of-00003.gguf` → `m.gguf`); any other file's own name."""
    return SPLIT_PART.sub(".gguf", name)


def gguf_models(names: list[str]) -> dict[str, list[str]]:
    """The repo's GGUF models by key, each its files in order (one, or every part of a split one). mmproj files,
    the vision towers that go with a model, are no model of their own."""
    models: dict[str, list[str]] = {}
    for name in sorted(names):
        if name.lower().endswith(".gguf") and "mmproj" not in Path(name).name.lower():
            models.setdefault(model_key(name), []).append(name)
    return models


def carries(name: str, quant: str) -> bool:
    """Whether the quantization is a whole token of the name, case-insensitively: Q4_K is not in Q4_K_M, nor Q4_0
    in IQ4_0. Tokens end at anything but a letter, a digit or `_`; they may start after a `_` (model_q4_k_m)."""
    return re.search(rf"(?<![A-Za-z0-9]){re.escape(quant)}(?![A-Za-z0-9_])", name, re.IGNORECASE) is not None


def listed(models: dict[str, list[str]], limit: int = 12) -> str:
    """The candidates, on one line."""
    shown = [parts[0] + (f" ({len(parts)} parts)" if len(parts) > 1 else "") for parts in models.values()]
    more = f" and {len(shown) - limit} more" if len(shown) > limit else ""
    return ", ".join(shown[:limit]) + more


def pick(source: Source, names: list[str]) -> list[str]:
    """The files the source names among the repo's: one GGUF, or every part of a split one. PullError when none
    or several match, listing the candidates."""
    models = gguf_models(names)
    if source.file is not None:
        if source.file not in names:
            raise PullError(f"{source.repo} has no file {source.file}")
        wanted = {model_key(source.file): models.get(model_key(source.file)) or [source.file]}
    elif not models:
        raise PullError(f"{source.repo} has no GGUF file")
    elif source.quant is None:
        wanted = models if len(models) == 1 else {k: v for k, v in models.items() if carries(k, DEFAULT_QUANT)}
        if len(wanted) != 1:
            raise PullError(
                f"{source.repo} has {len(models)} GGUF models: name one by its quantization (REPO:QUANT) or its file "
                f"({listed(models)})"
            )
    else:
        wanted = {key: parts for key, parts in models.items() if carries(key, source.quant)}
        if not wanted:
            raise PullError(f"{source.repo} has no GGUF file for {source.quant}: it has {listed(models)}")
        if len(wanted) > 1:
            raise PullError(
                f"{source.quant} is ambiguous in {source.repo}: {listed(wanted)}; name the file to pull instead"
            )
    [parts] = wanted.values()
    split = SPLIT_PART.search(parts[0])
    if split and len(parts) != int(split.group(2)):
        raise PullError(f"{source.repo} has {len(parts)} of the {int(split.group(2))} parts of {model_key(parts[0])}")
    return parts


# The hub


def hub_endpoint() -> str:
    """HF_ENDPOINT as it is now (huggingface_hub's own constant is read once, on import)."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


@contextlib.contextmanager
def hub_errors(source: Source, endpoint: str, file: str | None = None) -> Iterator[None]:
    """huggingface_hub's and the network's errors as PullErrors of one line."""
    from httpx2 import HTTPError
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    host = urlsplit(endpoint).netloc or endpoint
    try:
        yield
    except GatedRepoError:
        raise PullError(f"{source.repo} is gated: accept its terms on {host}, then set HF_TOKEN") from None
    except RepositoryNotFoundError:
        raise PullError(
            f"{source.repo} is not on {host} (or it is private: set HF_TOKEN to a token that may read it)"
        ) from None
    except RevisionNotFoundError:
        raise PullError(f"{source.repo} changed during the pull: pull it again") from None
    except RemoteEntryNotFoundError:
        raise PullError(f"{source.repo} has no file {file or source.file}") from None
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else "an error"
        raise PullError(f"{host} answered {status}: {first_line(error)}") from None
    except (HTTPError, LocalEntryNotFoundError) as error:
        cause = error.__cause__ if isinstance(error, LocalEntryNotFoundError) and error.__cause__ else error
        raise PullError(f"{host} cannot be reached: {first_line(cause)}") from None
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise PullError(f"the disk is full: {first_line(error)}") from None
        raise PullError(f"the download failed: {first_line(error)}") from None


def progress_bar(report: Callable[[int], None]):
    """huggingface_hub's tqdm (shown on a terminal, quiet otherwise), also reporting the bytes of its file
    downloaded so far (a download resumed within the same pull keeps its bar)."""
    from huggingface_hub.utils import tqdm

    class Bar(tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.so_far = kwargs.get("initial") or 0

        def update(self, n=1):
            self.so_far += n or 0  # counted here: a bar that is not shown counts nothing
            report(self.so_far)
            return super().update(n)

    return Bar


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def git_blob_sha1(path: Path) -> str:
    """A file's git blob id, which the hub reports for a file kept in git rather than LFS."""
    digest = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_file(path: Path, sibling) -> str:
    """The file's SHA-256, checked against what the hub says (its LFS sha256, else its git blob id)."""
    sha256 = sha256_of(path)
    if sibling.lfs is not None:
        expected, found = sibling.lfs.sha256, sha256
    elif sibling.blob_id:
        expected, found = sibling.blob_id, git_blob_sha1(path)
    else:
        raise PullError(f"the hub did not say what {sibling.rfilename} should hash to: it cannot be checked")
    if found.lower() != expected.lower():
        raise PullError(
            f"{sibling.rfilename} is corrupt: its hash is {found[:12]}…, the hub's {expected[:12]}…; nothing was "
            "registered"
        )
    return sha256


def download_notes(folder: Path, name: str) -> tuple[list[Path], Path]:
    """What huggingface_hub keeps beside a file it downloads into `folder` (under .cache/huggingface/download):
    its metadata and lock files, and the pattern of its partial downloads (one per process, deleted when the
    download fails; a killed process's stay)."""
    from huggingface_hub._local_folder import get_local_download_paths

    paths = get_local_download_paths(folder, name)
    return [paths.metadata_path, paths.lock_path], paths.incomplete_path("*")


def forget_download(folder: Path, name: str) -> None:
    """huggingface_hub's notes on a file that is gone: a pull of it again downloads it."""
    for note in download_notes(folder, name)[0]:
        note.unlink(missing_ok=True)


def remove_stale_partials(folder: Path, files: list[str]) -> None:
    """What killed pulls of these files left; not what another pull of the same file is writing now."""
    for name in files:
        pattern = download_notes(folder, name)[1]
        for partial in pattern.parent.glob(pattern.name):
            with contextlib.suppress(FileNotFoundError):
                if time.time() - partial.stat().st_mtime > STALE_SECONDS:
                    partial.unlink()
