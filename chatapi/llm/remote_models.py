"""What the remote backend knows of its model server's models: their list (GET /models, renewed in the background),
which is the default, each one's context window and what its chat template adds. The remote backend (remote.py)
holds one and makes its requests. UpstreamError is defined here, not in remote.py, as remote.py imports this module.
"""

import logging
import re
import time
from datetime import UTC, datetime

import gevent

from .catalog import UnknownModel
from .remote_fit import DEFAULT_TEMPLATE, Template, number, window_of

MODELS_SECONDS = 30  # the server's model list is read again when it is older than this
MAX_MODELS = 1000  # models of the list kept (and listed) at most
log = logging.getLogger(__name__)


class UpstreamError(Exception):
    """The model server cannot serve a reply. The message says why, with the server's address and words (for the
    log and /health's details); `public` says it without them (for a reply's error event and JSON errors)."""

    def __init__(self, message: str, public: str):
        super().__init__(message)
        self.public = public


class UpstreamModels:
    """The models of a RemoteBackend's server: the list it last sent (asked again every MODELS_SECONDS), and each
    listed model's window and chat template as learned from the server where it says them (see `context_window`,
    `template`). What is learned of a model goes when the server no longer lists it."""

    def __init__(self, backend):  # the RemoteBackend whose server lists them (remote.py)
        self.backend = backend
        self.settings = backend.settings
        self.listed: list[dict] | None = None  # the server's list, as it sent it (at most MAX_MODELS)
        self.listed_at = 0.0  # when it was read
        self.refreshing: gevent.Greenlet | None = None
        # Per listed model: its window as the server says it, None when it says none (asked again with the list).
        self.windows: dict[str, int | None] = {}
        self.templates: dict[str, Template] = {}  # per listed model: what its chat template adds, measured

    # The list

    def fetch(self, timeout: float) -> list[dict]:
        """The server's model list, asked now and remembered; UpstreamError when it cannot be read or is empty."""
        self.listed = self.backend.read_models(timeout)[:MAX_MODELS]
        self.listed_at = time.monotonic()
        ids = {m["id"] for m in self.listed}
        # What was learned of models no longer listed goes; a window the server did not say is asked again.
        self.windows = {i: window for i, window in self.windows.items() if i in ids and window is not None}
        self.templates = {i: template for i, template in self.templates.items() if i in ids}
        return self.listed

    def current(self, timeout: float) -> list[dict]:
        """The server's model list: read once, then answered from memory while a read of it MODELS_SECONDS old is
        renewed in the background (llama-cpp-python's server answers GET /models only between replies, and a
        request that resolves a model must not wait for that)."""
        if self.listed is None:
            return self.fetch(timeout)
        if time.monotonic() - self.listed_at > MODELS_SECONDS and not self.refreshing:
            self.refreshing = gevent.spawn(self._refresh, timeout)
        return self.listed

    def _refresh(self, timeout: float) -> None:
        try:
            self.fetch(timeout)
        except UpstreamError as exc:
            log.warning("the model list was not renewed: %s", exc)  # the last one stays
        finally:
            self.refreshing = None

    def card(self, model_id: str | None) -> dict | None:
        """The model as the server last listed it, if it did (nothing is asked)."""
        return next((m for m in self.listed or () if m["id"] == model_id), None)

    def default(self, models: list[dict]) -> str:
        """CHATAPI_LLM_MODEL, else the first model the server lists."""
        return self.settings.llm_model or models[0]["id"]

    def resolve(self, name: str | None) -> str | None:
        """The id of the model a reply is for: `name`, or None for the default (CHATAPI_LLM_MODEL, else the first
        the server lists). UnknownModel for a name the server does not list. When the list cannot be read the
        name is taken as it is (and None stays None unless CHATAPI_LLM_MODEL is set): the reply's request then
        fails with the server's error, as it would anyway."""
        try:
            models = self.current(self.settings.llm_timeout)
        except UpstreamError:
            return name or self.settings.llm_model
        if name is None:
            return self.default(models)
        if not any(m["id"] == name for m in models):
            raise UnknownModel(name)
        return name

    def listing(self) -> list[dict]:
        """The server's models in the API's representation (catalog.ModelEntry.public's), what it does not say
        null; UpstreamError when it cannot say which it serves."""
        models = self.current(self.settings.llm_timeout)
        default = self.default(models)
        return [self.public(model, model["id"] == default) for model in models]

    def public(self, model: dict, default: bool) -> dict:
        meta = model.get("meta") if isinstance(model.get("meta"), dict) else {}
        status = model.get("status")
        status = status.get("value") if isinstance(status, dict) else status  # llama-server's router mode
        created = model.get("created")
        return {
            "id": model["id"],
            "size": number(meta.get("size")),  # llama-server's
            "quantization": None,
            "architecture": None,
            "context_length": window_of(model) or self.windows.get(model["id"]),
            "chat_template": None,
            "loaded": status == "loaded" if isinstance(status, str) else None,
            "default": default,
            "source": "remote",
            "repo": None,
            "created_at": datetime.fromtimestamp(created, UTC).isoformat() if number(created) else None,
        }

    # Context windows and chat templates

    @property
    def fallback_window(self) -> int:
        """CHATAPI_LLM_N_CTX: the window assumed of a model whose server does not say it."""
        return getattr(self.settings, "llm_n_ctx", None) or self.settings.n_ctx

    def context_window(self, model_id: str | None) -> int:
        """The model's context window in tokens: what the server lists (vLLM's `max_model_len`, ...), else
        llama-server's /props, else what an earlier answer of the server said (a vLLM /tokenize, an error that
        named the window), else CHATAPI_LLM_N_CTX, at most the context the model was trained for when the server
        says that (llama-server's `meta.n_ctx_train`)."""
        if model_id is not None and model_id not in self.windows and self.card(model_id) is not None:
            window = window_of(self.card(model_id)) or self.props_window(model_id)
            self.remember_window(model_id, window)
        window = self.windows.get(model_id)
        if window:
            return window
        trained = number(((self.card(model_id) or {}).get("meta") or {}).get("n_ctx_train"))
        return min(self.fallback_window, trained) if trained else self.fallback_window

    def remember_window(self, model_id: str | None, window: int | None, said: str = "") -> None:
        """Keep a listed model's window (None: the server does not say it, until the list is read again)."""
        if self.card(model_id) is None or (window is None and self.windows.get(model_id)):
            return  # only listed models are remembered, so that this stays as small as the list
        if window and window != self.windows.get(model_id) and said:
            log.info("the model server says %r has a window of %d tokens (%s)", model_id, window, said)
        self.windows[model_id] = window

    def props_window(self, model_id: str) -> int | None:
        """llama-server's window for one reply (its slots' n_ctx), from GET /props; None from other servers."""
        # `model`: its router mode's
        _, props = self.backend.side_request("GET", "/props", params={"model": model_id})
        settings = props.get("default_generation_settings") if isinstance(props, dict) else None
        return number((settings or {}).get("n_ctx")) or number((props or {}).get("n_ctx"))

    def learn_window(self, model_id: str, error) -> None:
        """A prompt the server found too long for the model's window: the window its error names is the one
        the next prompts are fitted to (llama-server's `n_ctx`; vLLM's and llama-cpp-python's "maximum context
        length is N tokens", OpenAI's words)."""
        if not isinstance(error, dict):
            return
        said = re.search(r"maximum context length is (\d+) tokens", str(error.get("message")))
        window = number(error.get("n_ctx")) or (int(said.group(1)) if said else None)
        if window:
            self.remember_window(model_id, window, said="its error")

    def template(self, model_id: str | None) -> Template:
        """What the model's chat template adds to a prompt, measured once from the server's usage counts
        (Template.measure), else a conservative guess (DEFAULT_TEMPLATE: ChatML's markers take some 5 tokens a
        message where a tokenizer has them, some 15 spelled out by one that has not; a preamble such as Llama
        3.1's dates some 30)."""
        if model_id in self.templates:
            return self.templates[model_id]
        template = Template.measure(self.backend, model_id) if self.card(model_id) is not None else None
        if template is None:
            return DEFAULT_TEMPLATE  # measured again next time: the server may answer then
        self.templates[model_id] = template  # a listed model's: as many as the list holds
        return template
