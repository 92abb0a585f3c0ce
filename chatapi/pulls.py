"""Models pulled from Hugging Face: `flask models pull REPO[:QUANT]` (chatapi/cli.py) and `POST /models`
(chatapi/model_api.py), through huggingface_hub (what a source picks, the hub's errors: chatapi/huggingface.py).

The files are downloaded into `catalog.hub_dir(repo)` with `hf_hub_download` (a connection cut mid-file is resumed
with a Range request), each file's SHA-256 is checked against the hub's, the GGUF's header is read, and only then
is the model registered (`Catalog.add`). A pull that fails registers nothing and leaves no file behind.

Every pull has a state file, `models_dir/pulls/<id quoted>.json` (status, bytes downloaded of the total, the file,
the error), so that every process (each server worker, `flask models pull`) sees every pull; the process that pulls
holds an flock on `<id quoted>.lock` while it runs, which is how a second pull of the same id is refused and how a
pull whose process died (`pulling` in its file, nobody holding the lock) reads as interrupted.

The API's pulls run in a process of their own (`python -m chatapi.pulls`): a download of gigabytes and its
SHA-256 never stall the server's gevent worker, and a pull goes on whichever worker asks about it.
"""

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from .huggingface import (
    PullError,
    Source,
    check_file,
    first_line,
    forget_download,
    hub_endpoint,
    hub_errors,
    parse_source,
    pick,
    progress_bar,
    remove_stale_partials,
)
from .llm.catalog import Catalog, ModelEntry, NotGGUF, UnknownModel, owned_paths, read_header

PROGRESS_SECONDS = 0.25  # a pull's state file is written at most this often while it downloads
MAX_PULLS = 3  # at once: each is a process and a download; more would only share the same bandwidth


class Conflict(PullError):
    """The id is taken: a model has it, or another process is pulling it; or the model cannot be removed (the API's
    409)."""


# Progress


class PullState:
    """A pull's state file, and the lock its process holds while it pulls (see the module's docstring)."""

    def __init__(self, models_dir: str | Path, model_id: str, lock_fd: int | None = None):
        self.dir = Path(models_dir) / "pulls"
        self.id = model_id
        # Named by a digest of the id: any id (long, non-ASCII) makes a short, safe file name; the id is inside.
        self.file = self.dir / f"{hashlib.sha256(model_id.encode()).hexdigest()[:32]}.json"
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
        return self.lock_fd is not None or held(self.lock_file)

    def forget(self) -> None:
        """Drop a finished pull's state (the model was removed)."""
        self.file.unlink(missing_ok=True)


# Pulling


def pull(source: Source, catalog: Catalog, state: PullState | None = None) -> ModelEntry:
    """Download, check and register the model; PullError (one line) when it cannot, and then nothing is
    registered and none of the files it downloaded are left."""
    from huggingface_hub import HfApi, hf_hub_download

    endpoint = hub_endpoint()
    with hub_errors(source, endpoint):
        info = HfApi(endpoint=endpoint).model_info(source.repo, files_metadata=True)
    siblings = {sibling.rfilename: sibling for sibling in info.siblings or []}
    files = pick(source, list(siblings))
    same = next((e for e in catalog.entries() if e.repo == source.repo and set(e.files) & set(files)), None)
    if same is not None:  # `REPO:q4_k_m` after `REPO:Q4_K_M`: one file, one id (removing one must not take the other's)
        raise PullError(f"{source.repo}'s {files[0]} is there already as the model {same.id}")
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
    """The right to pull the source's model, its state written `pulling`; Conflict when a model has its id, another
    process is pulling it, or MAX_PULLS pulls are running."""
    if catalog.get(source.id) is not None:
        raise Conflict(f"{source.id} is there already")
    state = PullState(catalog.dir, source.id)
    if not state.claim():
        raise Conflict(f"{source.id} is being pulled")
    if catalog.get(source.id) is not None:  # a pull of it ended between the two looks
        state.release()
        raise Conflict(f"{source.id} is there already")
    if running_pulls(catalog.dir) > MAX_PULLS:  # this one counted
        state.release()
        raise Conflict(f"{MAX_PULLS} pulls are running: pull {source.id} once one has ended")
    state.write("pulling")
    return state


def running_pulls(models_dir: Path) -> int:
    """How many pulls hold their lock now (in any process)."""
    locks = (Path(models_dir) / "pulls").glob("*.lock")
    return sum(held(lock) for lock in locks)


def held(lock_file: Path) -> bool:
    """Whether a process holds a pull's lock file."""
    try:
        fd = os.open(lock_file, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def remove(catalog: Catalog, model_id: str) -> ModelEntry:
    """Unregister a pulled model and delete its files (Catalog.remove), with what huggingface_hub noted about
    them and the state of its pull; the entry. UnknownModel for none; Conflict for the server's default (it must
    stay), a model that came with it (bundled, CHATAPI_MODEL's file) and one being pulled."""
    entry = catalog.get(model_id)
    if entry is None:
        if PullState(catalog.dir, model_id).running():
            raise Conflict(f"{model_id} is being pulled: remove it once it is there")
        raise UnknownModel(model_id)
    if model_id == catalog.default_id() or model_id in catalog.pinned():
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
        str(Path(models_dir).resolve()),  # it runs in the project's folder
        "--lock-fd",
        str(state.lock_fd),
        "--",  # what follows is the source, whatever it starts with (a file named -x.gguf)
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
