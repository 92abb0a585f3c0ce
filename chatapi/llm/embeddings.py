"""Embeddings: a pooled, normalised vector per text from a GGUF, for /v1/embeddings.

The embedding model is its own llama.cpp context with embeddings on (its tokens' states averaged here), beside the
chat model's: the same GGUF (its weights mapped from the file once more, their pages shared) or another one
(CHATAPI_EMBEDDING_MODEL). It is loaded at the first request that needs it (its buffers cost memory a server that
never embeds should not pay) and kept. A llama.cpp context is not thread-safe: one lock, and the work in a real
thread of the hub's threadpool, so that the event loop goes on serving and the chat model's thread goes on
generating meanwhile.
"""

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import gevent.lock
import llama_cpp
import numpy as np
from llama_cpp import _internals

from .catalog import Catalog, names_a_file, path_id
from .loaded import real_lock
from .model import Vocabulary, default_model_path

# Sequences one decode may hold (llama.cpp's LLAMA_MAX_SEQ is 256): 100 short texts are one decode.
SEQUENCES = 256
# Tokens one request may have embedded: the bundled model reads 1,000 to 2,000 a second on two cores (less when the
# chat model is busy), so this is half a minute at most of the one embedding model's time.
MAX_TOTAL_TOKENS = 32768
log = logging.getLogger(__name__)


class InputTooLong(ValueError):
    """An input has more tokens than the embedding context holds (the message says it of the input)."""

    def __init__(self, index: int, tokens: int, n_ctx: int):
        super().__init__(f"has {tokens} tokens: the embedding model reads at most {n_ctx} at once")
        self.index = index


class InvalidToken(ValueError):
    """A token list holds an id outside the model's vocabulary (the message says it of the input)."""

    def __init__(self, index: int, token: int, n_vocab: int):
        super().__init__(f"holds the token {token}, outside the model's vocabulary (0 to {n_vocab - 1})")
        self.index = index


class TooManyTokens(ValueError):
    """The inputs have more than MAX_TOTAL_TOKENS tokens in all."""


class WrongDimensions(ValueError):
    """The vectors asked for are not as long as the model's."""


@dataclass(frozen=True)
class EmbeddingSource:
    """Which GGUF embeds: its id (as /v1 shows it) and its path."""

    id: str
    path: str


def embedding_source(catalog: Catalog, configured: str | None, model_cache: str) -> EmbeddingSource:
    """The model CHATAPI_EMBEDDING_MODEL names (an id of the catalog, or a GGUF's path), else the default chat model;
    UnknownModel for an id the catalog does not have."""
    if configured and names_a_file(configured):
        path = Path(configured)
        return EmbeddingSource(path_id(path), str(path))
    entry = catalog.resolve(configured or None)
    if entry.source == "bundled" and not Path(entry.path).exists():
        # Assembled from its package (as the chat model's first load does); not at every request: it checks the
        # copy's SHA-256, 0.15 s for its 250 MB.
        return EmbeddingSource(entry.id, str(default_model_path(model_cache)))
    return EmbeddingSource(entry.id, entry.path)


class EmbeddingModel:
    """A GGUF loaded for embeddings: one context of `n_ctx` cells shared by the sequences of a decode (several
    inputs, each its own sequence, read in one llama_decode); each token's last hidden state is read, averaged over
    its input (mean pooling) and normalised here.

    A decode holds at most n_ctx tokens in all. llama.cpp computes the logits of every token of an embeddings decode
    too (they are not read), so the context's buffers take n_vocab floats a token of n_ctx: about 1 MB a token for
    Gemma 3's 262,144 (CHATAPI_EMBEDDING_N_CTX says how many).

    A text's vector depends a little on where in a decode its tokens fall (llama.cpp's CPU kernels tile the rows
    of a matrix product by 16, and a row's sums are made in another order in another place of a tile): batched or
    alone, the same text's vectors agree to a cosine similarity of 0.99999 (a coordinate by up to 0.003)."""

    def __init__(self, source: EmbeddingSource, n_ctx: int, n_threads: int):
        started = time.monotonic()
        Vocabulary(source.path).close()  # NotGGUF, saying why, for a file llama.cpp cannot read
        self.id = source.id
        self.path = source.path
        params = llama_cpp.llama_model_default_params()
        # No repacked weights (AMX): its matrix product of several tokens in an embeddings context crashes the
        # process (llama-cpp-python 0.3.36 on a Xeon with AMX, a segmentation fault in ggml_backend_amx_mul_mat).
        params.use_extra_bufts = False
        self.weights = _internals.LlamaModel(path_model=self.path, params=params, verbose=False)
        trained = self.weights.n_ctx_train()
        self.n_ctx = min(n_ctx, trained) if trained > 0 else n_ctx
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = params.n_batch = params.n_ubatch = self.n_ctx
        params.n_seq_max = SEQUENCES
        # Every token is an output of an embeddings decode: the default of one output a sequence would be overrun.
        params.n_outputs_max = params.n_outputs_max_per_seq = 0
        params.n_threads = params.n_threads_batch = n_threads
        params.embeddings = True
        params.pooling_type = llama_cpp.LLAMA_POOLING_TYPE_NONE  # each token's state: pooled here
        params.kv_unified = True  # the decode's sequences share the n_ctx cells
        # Flash attention's kernel gives a text batched with 7 others another vector than alone (a coordinate of the
        # normalised vector by up to 0.016); without it, the same within 1e-7.
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self.context = _internals.LlamaContext(model=self.weights, params=params, verbose=False)
        self.batch = _internals.LlamaBatch(n_tokens=self.n_ctx, embd=0, n_seq_max=1, verbose=False)
        self.n_vocab = self.weights.n_vocab()
        self.dimensions = self.weights.n_embd()
        self.add_bos = llama_cpp.llama_vocab_get_add_bos(self.weights.vocab)
        self.load_seconds = time.monotonic() - started

    def close(self) -> None:
        self.batch.close()
        self.context.close()
        self.weights.close()

    def tokens_of(self, inputs: list[str | list[int]]) -> list[list[int]]:
        """Each input's tokens: a text tokenized as text (its control-token names are words, not tokens), with the
        model's BOS when it wants one; a token list as it is. InvalidToken for an id outside the vocabulary,
        InputTooLong for an input over n_ctx."""
        result = []
        for index, given in enumerate(inputs):
            if isinstance(given, str):
                tokens = self.weights.tokenize(given.encode("utf-8"), add_bos=self.add_bos, special=False)
            else:
                bad = next((t for t in given if not 0 <= t < self.n_vocab), None)
                if bad is not None:
                    raise InvalidToken(index, bad, self.n_vocab)
                tokens = given
            if len(tokens) > self.n_ctx:
                raise InputTooLong(index, len(tokens), self.n_ctx)
            result.append(tokens)
        return result

    def embed(self, token_lists: list[list[int]]) -> np.ndarray:
        """The normalised mean of the token states of each token list (non-empty, each within n_ctx), one row each, read
        as few decodes as fit: the lists in order, as many as n_ctx tokens and SEQUENCES sequences hold."""
        vectors = np.empty((len(token_lists), self.dimensions), dtype=np.float32)
        start = 0
        while start < len(token_lists):
            end, used = start, 0
            while end < len(token_lists) and end - start < SEQUENCES and used + len(token_lists[end]) <= self.n_ctx:
                used += len(token_lists[end])
                end += 1
            vectors[start:end] = self._decode(token_lists[start:end])
            start = end
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.where(norms > 0, norms, 1)

    def _decode(self, token_lists: list[list[int]]) -> np.ndarray:
        """One llama_decode of the lists, sequence i the list i; their pooled vectors."""
        batch = self.batch.batch
        i = 0
        for sequence, tokens in enumerate(token_lists):
            for position, token in enumerate(tokens):
                batch.token[i] = token
                batch.pos[i] = position
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = sequence
                batch.logits[i] = True  # the pooling reads every token's state
                i += 1
        batch.n_tokens = i
        llama_cpp.llama_memory_clear(self.context.memory, True)  # what the last decode left is no context here
        self.context.decode(self.batch)
        rows = np.empty((len(token_lists), self.dimensions), dtype=np.float32)
        states = np.ctypeslib.as_array(llama_cpp.llama_get_embeddings(self.context.ctx), shape=(i, self.dimensions))
        start = 0
        for sequence, tokens in enumerate(token_lists):
            rows[sequence] = states[start : start + len(tokens)].mean(axis=0, dtype=np.float64)
            start += len(tokens)
        return rows


class Embedder:
    """The embedding model of a server's settings: which GGUF, loaded at the first request (in a real thread of the
    hub's pool) and kept."""

    def __init__(self, catalog: Catalog, configured: str | None, model_cache: str, n_ctx: int, n_threads: int):
        self.catalog = catalog
        self.configured = configured
        self.model_cache = model_cache
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.model: EmbeddingModel | None = None
        self.lock = real_lock()  # one load, and one decode at a time: a llama.cpp context is not thread-safe
        # One request at a time takes a thread of the hub's pool, which the chats' prompts are built in too: the
        # others wait for it in their greenlets, not in threads of the pool blocked on the lock.
        self.turn = gevent.lock.Semaphore()

    def source(self) -> EmbeddingSource:
        """The GGUF that embeds (UnknownModel when CHATAPI_EMBEDDING_MODEL names an id the catalog lacks)."""
        return embedding_source(self.catalog, self.configured, self.model_cache)

    def embed(self, inputs: list[str | list[int]], dimensions: int | None = None) -> tuple[str, np.ndarray, int]:
        """The embedding model's id, the normalised vector of each input (a text, or a token list) and the tokens read.
        InputTooLong, InvalidToken as EmbeddingModel.tokens_of says; TooManyTokens over MAX_TOTAL_TOKENS in all;
        WrongDimensions unless `dimensions` (if given) is the model's. Call in a real thread: the model is loaded
        now if it is not (a second or more), and a decode takes as long as its tokens. One call at a time (the lock):
        a model loaded from a path the catalog now gives another file for is loaded again, with nobody using it."""
        with self.lock:
            model = self._loaded()
            if dimensions is not None and dimensions != model.dimensions:
                raise WrongDimensions(f"the model {model.id} makes vectors of {model.dimensions} dimensions only")
            token_lists = model.tokens_of(inputs)
            total = sum(map(len, token_lists))
            if total > MAX_TOTAL_TOKENS:
                raise TooManyTokens(f"the inputs have {total} tokens: at most {MAX_TOTAL_TOKENS} in one request")
            return model.id, model.embed(token_lists), total

    def _loaded(self) -> EmbeddingModel:
        source = self.source()
        if self.model is not None and (self.model.id, self.model.path) != (source.id, source.path):
            self.model.close()
            self.model = None
        if self.model is None:
            self.model = EmbeddingModel(source, self.n_ctx, self.n_threads)
            log.info("the embedding model %s loaded in %.2f s", source.id, self.model.load_seconds)
        return self.model
