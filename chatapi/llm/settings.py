"""The model room's settings, read from the app's CHATAPI_* configuration and checked at start: a combination
that cannot work stops the server with a message naming the setting."""

import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from .model import BATCH_SIZE
from .prompt import LAYOUTS

BACKENDS = ("local", "openai")


@dataclass(frozen=True)
class ModelSettings:
    """The model room's settings, from the app's CHATAPI_* configuration."""

    model: str | None  # the default model: an id or a GGUF's path; None: the bundled model, assembled into model_cache
    model_cache: str  # where the bundled model is assembled (instance/models)
    n_ctx: int
    n_threads: int
    max_tokens: int
    parallel: int  # replies generated together
    step_tokens: int  # tokens decoded in one engine step at most: a long prompt is read in chunks this size
    queue_size: int  # replies waiting or running at once; more get QueueFull
    kv_chats: int  # chats whose KV cache is kept (at least `parallel`: each running reply holds one)
    ping_seconds: float
    grace_seconds: float  # a reply nobody listens to for this long is stopped
    kept_bytes: int  # what the finished replies kept for reconnects may hold at most, in bytes
    sources_tokens: int  # internet mode: room kept for web sources (at most half the prompt)
    sources_layout: str  # internet mode: where the sources go (prompt.LAYOUTS)
    backend: str = "local"  # or "openai": an OpenAI-compatible server at llm_url
    llm_url: str | None = None
    llm_api_key: str | None = None
    llm_model: str | None = None  # None: the first model the server lists
    llm_timeout: float = 60.0  # seconds the server may stay silent before a reply ends with an error
    redis_url: str | None = None  # replies shared across processes (redis_replies.py)
    redis_prefix: str = "chatapi:"
    redis_lease: float = 10.0  # seconds a chat stays locked by a process that stopped renewing it
    redis_ttl: int = 3600  # seconds a finished reply's stream is kept
    models_loaded: int = 1  # models kept in memory at once
    models_dir: str | None = None  # pulled models and their catalog; None: model_cache
    llm_n_ctx: int | None = None  # the remote model's window when its server does not say it
    kv_dir: str = "instance/kv"  # chats' KV-cache states on disk (kv_files.py)
    kv_disk_bytes: int = 0  # what they may take at most; 0: none are kept

    @classmethod
    def from_config(cls, config: Mapping, model_cache: str) -> "ModelSettings":
        """The settings of CHATAPI_*; ValueError (the server does not start) for a combination that cannot work."""
        if config["CHATAPI_SOURCES_LAYOUT"] not in LAYOUTS:
            raise ValueError(f"CHATAPI_SOURCES_LAYOUT must be one of {', '.join(LAYOUTS)}")
        check_backend(config)
        check_redis(config)
        if config["CHATAPI_MODELS_LOADED"] < 1:
            raise ValueError(f"CHATAPI_MODELS_LOADED={config['CHATAPI_MODELS_LOADED']!r}: must be 1 or more")
        if config["CHATAPI_KV_DISK_MB"] < 0:
            raise ValueError(f"CHATAPI_KV_DISK_MB={config['CHATAPI_KV_DISK_MB']!r}: must be 0 (none kept) or more")
        if config["CHATAPI_REPLIES_KEPT_MB"] < 0:
            raise ValueError(f"CHATAPI_REPLIES_KEPT_MB={config['CHATAPI_REPLIES_KEPT_MB']!r}: must be 0 or more")
        return cls(
            model=config.get("CHATAPI_MODEL_PATH") or config["CHATAPI_MODEL"],
            model_cache=model_cache,
            n_ctx=config["CHATAPI_N_CTX"],
            n_threads=config["CHATAPI_N_THREADS"],
            max_tokens=config["CHATAPI_MAX_TOKENS"],
            parallel=config["CHATAPI_PARALLEL"],
            # Room for every running reply's token and some prompt, within one llama.cpp batch.
            step_tokens=min(max(config["CHATAPI_STEP_TOKENS"], config["CHATAPI_PARALLEL"] + 1), BATCH_SIZE),
            queue_size=config["CHATAPI_QUEUE_SIZE"],
            kv_chats=max(config["CHATAPI_KV_CHATS"], config["CHATAPI_PARALLEL"]),
            ping_seconds=config["CHATAPI_PING_SECONDS"],
            grace_seconds=config["CHATAPI_GRACE_SECONDS"],
            kept_bytes=int(config["CHATAPI_REPLIES_KEPT_MB"] * 1024 * 1024),
            sources_tokens=max(0, config["CHATAPI_SOURCES_TOKENS"]),
            sources_layout=config["CHATAPI_SOURCES_LAYOUT"],
            backend=config["CHATAPI_LLM_BACKEND"],
            llm_url=config["CHATAPI_LLM_URL"],
            llm_api_key=config["CHATAPI_LLM_API_KEY"],
            llm_model=config["CHATAPI_LLM_MODEL"],
            llm_timeout=config["CHATAPI_LLM_TIMEOUT"],
            redis_url=config["CHATAPI_REDIS_URL"],
            redis_prefix=config["CHATAPI_REDIS_PREFIX"],
            redis_lease=config["CHATAPI_REDIS_LEASE_SECONDS"],
            redis_ttl=config["CHATAPI_REDIS_TTL_SECONDS"],
            models_loaded=config["CHATAPI_MODELS_LOADED"],
            models_dir=config["CHATAPI_MODELS_DIR"] or model_cache,
            llm_n_ctx=config["CHATAPI_LLM_N_CTX"],
            kv_dir=config["CHATAPI_KV_DIR"] or os.path.join(os.path.dirname(model_cache), "kv"),
            kv_disk_bytes=int(config["CHATAPI_KV_DISK_MB"] * 1024 * 1024),
        )


def check_backend(config: Mapping) -> None:
    """CHATAPI_LLM_BACKEND and the settings that go with it: ValueError saying what is wrong."""
    backend, url = config["CHATAPI_LLM_BACKEND"], config["CHATAPI_LLM_URL"]
    if backend not in BACKENDS:
        raise ValueError(f"CHATAPI_LLM_BACKEND={backend!r}: must be one of {', '.join(BACKENDS)}")
    remote_only = [name for name in ("CHATAPI_LLM_URL", "CHATAPI_LLM_API_KEY", "CHATAPI_LLM_MODEL") if config[name]]
    if backend == "local" and remote_only:
        raise ValueError(
            f"{', '.join(remote_only)} set with CHATAPI_LLM_BACKEND=local: they are for CHATAPI_LLM_BACKEND=openai "
            "(a remote OpenAI-compatible server); set it, or unset them"
        )
    if backend == "openai":
        parts = urlsplit(url or "")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"CHATAPI_LLM_BACKEND=openai needs CHATAPI_LLM_URL, the base URL of an OpenAI-compatible server "
                f"such as http://127.0.0.1:8001/v1 (got {url!r})"
            )
    if config["CHATAPI_LLM_TIMEOUT"] <= 0:
        raise ValueError(f"CHATAPI_LLM_TIMEOUT={config['CHATAPI_LLM_TIMEOUT']!r}: must be more than 0 seconds")


def check_redis(config: Mapping) -> None:
    """CHATAPI_REDIS_* : ValueError saying what is wrong."""
    url = config["CHATAPI_REDIS_URL"]
    if url and urlsplit(url).scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"CHATAPI_REDIS_URL={url!r}: must be a redis://, rediss:// or unix:// URL")
    for name in ("CHATAPI_REDIS_LEASE_SECONDS", "CHATAPI_REDIS_TTL_SECONDS"):
        if config[name] <= 0:
            raise ValueError(f"{name}={config[name]!r}: must be more than 0 seconds")
