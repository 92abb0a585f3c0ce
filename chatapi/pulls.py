"""Models pulled from Hugging Face: `flask models pull REPO[:QUANT]` (chatapi/cli.py) and `POST /models`
(chatapi/model_api.py), through huggingface_hub.

A quantization picks the repo's `.gguf` whose name carries it as a whole token, case-insensitively (every part of a
split GGUF, `-00001-of-00003`; never an `mmproj` file, a vision tower); a pull may name the file instead. The files
are downloaded into `catalog.hub_dir(repo)` with `hf_hub_download` (a connection cut mid-file is resumed with a
Range request), each file's SHA-256 is checked against the hub's (its LFS pointer), the GGUF's header is read, and
only then is the model registered (`Catalog.add`). A pull that fails registers nothing and leaves no file behind.

Every pull has a state file, `models_dir/pulls/<id quoted>.json` (status, bytes downloaded of the total, the file,
the error), so that every process (each server worker, `flask models pull`) sees every pull; the process that pulls
holds an flock on `<id quoted>.lock` while it runs, which is how a second pull of the same id is refused and how a
pull whose process died (`pulling` in its file, nobody holding the lock) reads as interrupted.

The API's pulls run in a process of their own (`python -m chatapi.pulls`): a download of gigabytes and its
SHA-256 never stall the server's gevent worker, and a pull goes on whichever worker asks about it.

HF_ENDPOINT (a mirror; the tests' own hub), HF_TOKEN (gated and private repos) and HF_HOME are read as each pull
starts: huggingface_hub reads HF_ENDPOINT once, when it is imported, so the endpoint is passed to it explicitly.
"""

import argparse
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

from .llm.catalog import MAX_ID_LENGTH, Catalog, ModelEntry, NotGGUF, UnknownModel, owned_paths, read_header

DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_QUANT = "Q4_K_M"  # what llama.cpp's -hf and Ollama pick when none is named
REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
QUANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,49}")
# What a source may start with, as people copy it from Ollama (`hf.co/REPO:QUANT`) or from the hub's page.
SOURCE_PREFIXES = re.compile(r"^(?:https?://)?(?:hf\.co|huggingface\.co)/", re.IGNORECASE)
SPLIT_PART = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)
PROGRESS_SECONDS = 0.25  # a pull's state file is written at most this often while it downloads
STALE_SECONDS = 60  # a partial download untouched this long is a dead process's: nobody is writing it
CHUNK = 1 << 20


class PullError(Exception):
    """A pull that cannot be done, in one line that says why (the CLI's `Error:` line, the API's error event)."""


class Conflict(PullError):
    """The id is taken: a model has it, or another process is pulling it; or the model cannot be removed (the API's
    409)."""


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


# Progress


class PullState:
    """A pull's state file, and the lock its process holds while it pulls (see the module's docstring)."""

    def __init__(self, models_dir: str | Path, model_id: str, lock_fd: int | None = None):
        self.dir = Path(models_dir) / "pulls"
        self.id = model_id
        self.file = self.dir / f"{quote(model_id, safe='')}.json"
        self.lock_file = self.file.with_suffix(".lock")
        self.lock_fd = lock_fd  # held: this process may pull
        self.written = 0.0

    def claim(self) -> bool:
        """Take the id's lock, without waiting; False when another process is pulling it. A reader's brief look
        (`read`) is waited out."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        for _ in range(20):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                time.sleep(0.005)
                continue
            self.lock_fd = fd
            return True
        os.close(fd)
        return False

    def release(self) -> None:
        if self.lock_fd is not None:
            os.close(self.lock_fd)  # the lock goes with the last descriptor of it
            self.lock_fd = None

    def write(
        self,
        status: str,
        downloaded: int = 0,
        total: int | None = None,
        file: str | None = None,
        message: str | None = None,
    ) -> None:
        """The state, written aside and renamed (a reader never sees half of it)."""
        state = {
            "id": self.id,
            "status": status,
            "downloaded": downloaded,
            "total": total,
            "file": file,
            "message": message,
            "updated": time.time(),
        }
        self.dir.mkdir(parents=True, exist_ok=True)
        partial = self.file.with_name(f".{self.file.name}.{os.getpid()}.{threading.get_ident()}")
        partial.write_text(json.dumps(state))
        os.replace(partial, self.file)
        self.written = time.monotonic()

    def progress(self, downloaded: int, total: int | None, file: str) -> None:
        """Bytes downloaded so far, written at most every PROGRESS_SECONDS."""
        if time.monotonic() - self.written >= PROGRESS_SECONDS:
            self.write("pulling", downloaded, total, file)

    def read(self) -> dict | None:
        """The state (None: no pull of this id is known); a `pulling` one whose process is gone reads as failed,
        `interrupted`."""
        state = self._load()
        if state is not None and state["status"] == "pulling" and not self.running():
            state = self._load()  # it may have ended between the two looks, and said so
            if state is not None and state["status"] == "pulling":
                state.update(status="failed", message="the pull was interrupted (its process ended)")
        return state

    def _load(self) -> dict | None:
        try:
            return json.loads(self.file.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def running(self) -> bool:
        """Whether a process holds the id's lock (this one, or another)."""
        if self.lock_fd is not None:
            return True
        try:
            fd = os.open(self.lock_file, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    def forget(self) -> None:
        """Drop a finished pull's state (the model was removed)."""
        self.file.unlink(missing_ok=True)


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


# Pulling


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


def pull(source: Source, catalog: Catalog, state: PullState | None = None) -> ModelEntry:
    """Download, check and register the model; PullError (one line) when it cannot, and then nothing is
    registered and none of the files it downloaded are left."""
    from huggingface_hub import HfApi, hf_hub_download

    endpoint = hub_endpoint()
    with hub_errors(source, endpoint):
        info = HfApi(endpoint=endpoint).model_info(source.repo, files_metadata=True)
    siblings = {sibling.rfilename: sibling for sibling in info.siblings or []}
    files = pick(source, list(siblings))
    total = sum(siblings[name].size or 0 for name in files)
    folder = catalog.hub_dir(source.repo)
    remove_stale_partials(folder, files)
    done = 0
    try:
        digests = {}
        for name in files:

            def report(so_far: int, name: str = name, before: int = done) -> None:
                if state is not None:
                    state.progress(before + so_far, total, name)

            with hub_errors(source, endpoint, name):
                # At the commit just listed: every part of a split model, and the hashes, from the same one.
                local = hf_hub_download(
                    source.repo,
                    name,
                    revision=info.sha,
                    local_dir=folder,
                    endpoint=endpoint,
                    tqdm_class=progress_bar(report),
                )
            done += siblings[name].size or Path(local).stat().st_size
            if state is not None:
                state.write("pulling", done, total, name)
            digests[name] = check_file(Path(local), siblings[name])
        first = folder / files[0]
        try:
            header = read_header(first)
        except NotGGUF as error:
            raise PullError(f"{files[0]} is not a model llama.cpp can load: {first_line(error)}") from None
        size = sum((folder / name).stat().st_size for name in files)
        entry = ModelEntry(
            source.id,
            str(first),
            size,
            header.get("quantization") or source.quant,
            header.get("architecture"),
            header.get("context_length"),
            bool(header.get("chat_template")),
            "hub",
            source.repo,
            tuple(files),
            digests,
            time.time(),
        )
        if catalog.get(entry.id) is not None:
            raise PullError(f"{entry.id} is there already")
        try:
            catalog.add(entry)
        except ValueError as error:
            raise PullError(first_line(error)) from None
        return entry
    except BaseException:
        discard(catalog, folder, files)
        raise


def discard(catalog: Catalog, folder: Path, files: list[str]) -> None:
    """A failed pull's files, and huggingface_hub's notes on them, unless a registered model is made of them."""
    kept = {Path(path).resolve() for entry in catalog.entries() for path in owned_paths(entry)}
    for name in files:
        path = folder / name
        if path.resolve() not in kept:
            path.unlink(missing_ok=True)
            forget_download(folder, name)
    remove_empty(folder, catalog.dir)


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


def remove_empty(folder: Path, root: Path) -> None:
    """The repo's folder (and its owner's), once nothing is left in it but huggingface_hub's notes: no model's
    file, and no partial download of another pull."""

    def content(path: Path) -> bool:
        return path.is_file() and (".cache" not in path.relative_to(folder).parts or path.suffix == ".incomplete")

    if folder.is_dir() and not any(content(path) for path in folder.rglob("*")):
        shutil.rmtree(folder, ignore_errors=True)
    for parent in folder.parents:
        if parent == root or root not in parent.parents:
            break
        with contextlib.suppress(OSError):
            parent.rmdir()  # only when empty


def claim(catalog: Catalog, source: Source) -> PullState:
    """The right to pull the source's model, its state written `pulling`; Conflict when a model has its id or
    another process is pulling it."""
    if catalog.get(source.id) is not None:
        raise Conflict(f"{source.id} is there already")
    state = PullState(catalog.dir, source.id)
    if not state.claim():
        raise Conflict(f"{source.id} is being pulled")
    if catalog.get(source.id) is not None:  # a pull of it ended between the two looks
        state.release()
        raise Conflict(f"{source.id} is there already")
    state.write("pulling")
    return state


def remove(catalog: Catalog, model_id: str) -> ModelEntry:
    """Unregister a pulled model and delete its files (Catalog.remove), with what huggingface_hub noted about
    them and the state of its pull; the entry. UnknownModel for none; Conflict for the server's default (it must
    stay), a model that came with it (bundled, CHATAPI_MODEL's file) and one being pulled."""
    entry = catalog.get(model_id)
    if entry is None:
        if PullState(catalog.dir, model_id).running():
            raise Conflict(f"{model_id} is being pulled: remove it once it is there")
        raise UnknownModel(model_id)
    if model_id == catalog.default_id():
        raise Conflict(f"{model_id} is the server's default model (CHATAPI_MODEL): set another first")
    if entry.source != "hub":
        raise Conflict(f"{model_id} comes with the server: only pulled models are removed")
    entry = catalog.remove(model_id)
    if entry is None:  # another process removed it meanwhile
        raise UnknownModel(model_id)
    if entry.repo:
        folder = catalog.hub_dir(entry.repo)
        for name in entry.files:
            if not (folder / name).exists():  # not another model's
                forget_download(folder, name)
        remove_empty(folder, catalog.dir)
    PullState(catalog.dir, model_id).forget()
    return entry


def run(source: Source, catalog: Catalog, state: PullState) -> ModelEntry:
    """A claimed pull, its state written as it goes: `done`, or `failed` with the one-line reason."""
    try:
        state.write("pulling")
        entry = pull(source, catalog, state)
    except PullError as error:
        state.write("failed", message=str(error))
        raise
    except (KeyboardInterrupt, SystemExit):
        state.write("failed", message="the pull was interrupted")
        raise
    except Exception as error:
        state.write("failed", message=f"the pull failed: {type(error).__name__}: {first_line(error)}")
        raise
    else:
        state.write("done", entry.size, entry.size, entry.files[-1])
        return entry
    finally:
        state.release()


def start(source: Source, models_dir: str | Path, state: PullState) -> subprocess.Popen:
    """Run a claimed pull in a process of its own (`python -m chatapi.pulls`), which takes over the claim."""
    root = Path(__file__).resolve().parents[1]
    command = [
        sys.executable,
        "-m",
        "chatapi.pulls",
        "--models-dir",
        str(models_dir),
        "--lock-fd",
        str(state.lock_fd),
        source.repo if source.file is not None else source.id,
    ]
    if source.file is not None:
        command.append(source.file)
    env = dict(os.environ, HF_HUB_DISABLE_PROGRESS_BARS="1")
    try:
        process = subprocess.Popen(
            command,
            cwd=root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            pass_fds=(state.lock_fd,),
        )
    except OSError as error:
        state.write("failed", message=f"the pull could not start: {first_line(error)}")
        raise PullError(f"the pull could not start: {first_line(error)}") from None
    finally:
        state.release()  # the child holds it now
    threading.Thread(target=process.wait, daemon=True).start()  # reaped when it ends
    return process


def main(argv: list[str] | None = None) -> int:
    """The process the API starts for a pull: the claim's lock is inherited as --lock-fd."""
    parser = argparse.ArgumentParser(prog="python -m chatapi.pulls")
    parser.add_argument("--models-dir", required=True)
    parser.add_argument("--lock-fd", type=int, required=True)
    parser.add_argument("source")
    parser.add_argument("file", nargs="?")
    args = parser.parse_args(argv)
    # Stopped (the server's stop, a kill): as an interrupt, so that the pull leaves nothing behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    source = parse_source(args.source, args.file)  # as the API parsed it
    try:
        run(source, Catalog(args.models_dir), PullState(args.models_dir, source.id, lock_fd=args.lock_fd))
    except PullError as error:
        print(f"pull {source.id}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
