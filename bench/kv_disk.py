"""A long chat's follow-up: its first token when its state is in memory, on disk after other chats took its place, and
on disk after a restart, each over a cold read of a chat as long; what a save costs; what the files take; and
llama.cpp's llama-server saving and restoring a slot by hand beside it.

Run it alone: `.venv/bin/python -m bench kv_disk`. Its table is in docs/benchmarks.md under TITLE, after NOTES.
"""

import statistics
import tempfile
import time
from pathlib import Path

from bench.common import FOLLOW_UP, Server, long_history, model_path, prompt_text, stream
from bench.llama_server import BINARY, NOT_COMPARED, LlamaServer
from chatapi.llm.kv_files import MAGIC
from chatapi.llm.model import Model
from config import Config
from tests.support import wait_for

CHATS = 3  # long chats, each measured at every stage
OTHERS = 10  # chats that reply between a long chat's two turns (CHATAPI_KV_CHATS=6 keep fewer in memory)
TTFT_TOKENS = 8
GOAL = 0.25  # a follow-up from disk over a cold read

TITLE = "A long chat's follow-up: from memory, from disk, cold"
NOTES = f"""\
The real server with its defaults (`CHATAPI_KV_CHATS=6`, `CHATAPI_KV_DISK_MB=2048`) on a fresh SQLite database and
a KV folder of the run's own. {CHATS} chats of about 3,000 tokens each (two rotations of the prose histories, distinct
from their first message) get a first reply (*cold*: the whole prompt read), then a short follow-up three times:
(a) right after it, its state in memory; (b) after {OTHERS} other chats replied, so that its sequence went to another
chat and its state comes from its file; (c) after the server restarted, from its file. Each figure is the median
time to first token of the {CHATS} chats' follow-ups (`max_tokens={TTFT_TOKENS}`, temperature 0), over the median
cold time to first token of the same chats' first replies, in the same run. The goal: (b) and (c) at most {GOAL}.

*save* is measured in the benchmark's process before the server starts, on the same model and context: the state
of a 3,000-token sequence copied out of llama.cpp's cache (`llama_state_seq_get_data`), which the model's thread
does between two steps (so it delays the next step of the replies running beside by that much), over one step of
one reply; writing the file is the writer thread's, off the model's. *restore* loads that state into another
sequence, over reading the 3,000 tokens cold in the same process. *disk* is the size of a chat's file.

llama.cpp's `llama-server` (when `CHATAPI_BENCH_LLAMA_SERVER` names one: `make bench` builds it), `-np 4` with
`--slot-save-path`: the same prompt text read cold into slot 0, saved by hand (`POST /slots/0?action=save`),
the slot erased, restored by hand (`action=restore`) and the follow-up asked; its ratio counts the restore's time
and the follow-up's first token, over its own cold first token. It saves nothing by itself: a client must."""


def long_chat(tag: str) -> list[tuple[str, str]]:
    """About 3,000 tokens of prose: two rotations of the benchmark histories, the first message tagged."""
    first, second = long_history(tag, 0), long_history(f"{tag} again", 4)
    return [*first[:-1], *second]


def ttft(server: Server, chat_id: str) -> tuple[float, dict]:
    reply = stream(server.infer_url(chat_id, TTFT_TOKENS))
    return reply.ttft * 1000, reply.done


def cached_share(done: dict) -> float:
    """The share of the prompt that was not read again (from memory, or restored from disk)."""
    return done["usage"]["cached_tokens"] / done["usage"]["prompt_tokens"]


def saved(kv_dir: Path, chat_id: str) -> Path:
    """The chat's state file, once written (the writer follows a reply's `done`)."""
    wait_for(lambda: any(kv_dir.glob(f"*/{chat_id}")), seconds=60, what=f"the state of chat {chat_id}")
    return next(kv_dir.glob(f"*/{chat_id}"))


def follow_ups(server: Server, chats: list[str]) -> tuple[list[float], list[float]]:
    """Each chat's follow-up: its time to first token (ms), and the share of its prompt that was not read again."""
    times, shares = [], []
    for chat_id in chats:
        server.add(chat_id, "Human", FOLLOW_UP)
        took, done = ttft(server, chat_id)
        times.append(took)
        shares.append(cached_share(done))
    return times, shares


def in_process(path: str, prompt: str) -> dict:
    """The save's copy and the restore in llama.cpp, against one step and a cold read, on the server's context."""
    model = Model(path, Config.CHATAPI_N_CTX, Config.CHATAPI_N_THREADS, Config.CHATAPI_KV_CHATS)
    try:
        tokens = model.tokenize(prompt)[:3000]
        started = time.perf_counter()
        for start in range(0, len(tokens), 256):
            chunk = tokens[start : start + 256]
            model.decode([(token, start + i, 0, False) for i, token in enumerate(chunk)])
        cold = time.perf_counter() - started
        # Taken in turns, the least of each: what the work costs, not what else the machine did meanwhile.
        copies, restores, steps = [], [], []
        for position in range(10):
            started = time.perf_counter()
            state = model.save_state(0)
            copies.append(time.perf_counter() - started)
            data = bytearray(state)  # as read from the file
            started = time.perf_counter()
            model.restore_state(1, data)
            restores.append(time.perf_counter() - started)
            started = time.perf_counter()
            model.decode([(tokens[position], position, 2, True)])
            steps.append(time.perf_counter() - started)
        return {"tokens": len(tokens), "cold": cold, "copy": min(copies), "restore": min(restores),
                "step": min(steps), "bytes": len(state)}
    finally:
        model.close()


def main() -> str | None:
    path = model_path()
    histories = [long_chat(f"Long chat {n}") for n in range(CHATS)]
    engine = in_process(path, prompt_text(histories[0]))
    with tempfile.TemporaryDirectory(prefix="chatapi-bench-kv-") as tmp:
        workdir = Path(tmp)
        kv_dir = workdir / "kv"
        settings = {"CHATAPI_KV_DIR": str(kv_dir)}
        with Server(workdir, path, **settings) as server:
            chats = [server.new_chat(history) for history in histories]
            firsts = [ttft(server, chat_id) for chat_id in chats]
            files = [saved(kv_dir, chat_id) for chat_id in chats]
            memory = follow_ups(server, chats)
            for n in range(OTHERS):
                ttft(server, server.new_chat([("Human", f"Other chat {n}: what is the capital of France?")]))
            disk = follow_ups(server, chats)
        with Server(workdir, path, **settings) as server:
            restart = follow_ups(server, chats)
        sizes = [file.stat().st_size - len(MAGIC) for file in files]
        theirs = llama_server_part(path, workdir, histories[0]) if BINARY else None
    median = statistics.median
    cold = median(t for t, _ in firsts)
    prompt_tokens = median(done["usage"]["prompt_tokens"] for _, done in firsts)
    print(f"cold first token, {prompt_tokens:.0f}-token prompt: {cold:.0f} ms (median of {CHATS})")
    print(f"{'follow-up first token':44} {'ms':>8} {'/ cold':>8} {'prompt not read again':>22}")
    for name, (times, shares) in (
        ("(a) right after the previous reply", memory),
        (f"(b) after {OTHERS} other chats (from disk)", disk),
        ("(c) after a restart (from disk)", restart),
    ):
        print(f"{name:44} {median(times):8.0f} {median(times) / cold:8.3f} {min(shares):21.1%}")
    worst = max(median(disk[0]), median(restart[0])) / cold
    print(f"goal (b), (c) <= {GOAL}: {'met' if worst <= GOAL else 'NOT met'}")
    copy, step = engine["copy"] * 1000, engine["step"] * 1000
    print(f"save: copy of a {engine['tokens']}-token state {copy:.1f} ms on the model's thread = {copy / step:.2f} "
          f"steps of one reply ({step:.1f} ms)")
    restore, read = engine["restore"] * 1000, engine["cold"] * 1000
    print(f"restore of that state {restore:.1f} ms / reading its tokens cold {read:.0f} ms = {restore / read:.3f}")
    per_thousand = median(sizes) / (prompt_tokens / 1000)
    print(f"disk: {median(sizes) / 1e6:.1f} MB a chat of ~{prompt_tokens:.0f} tokens ({per_thousand / 1e6:.1f} MB per "
          f"1,000 tokens; a sliding-window model's window is a fixed part of it)")
    if theirs:
        print(f"llama-server: cold first token {theirs['cold']:.0f} ms; save {theirs['save']:.0f} ms, restore "
              f"{theirs['restore']:.0f} ms, then follow-up first token {theirs['follow_up']:.0f} ms: "
              f"(restore + first token) / cold {(theirs['restore'] + theirs['follow_up']) / theirs['cold']:.3f}; "
              f"file {theirs['bytes'] / 1e6:.1f} MB")
    else:
        print(NOT_COMPARED)
    return None


def llama_server_part(path: str, workdir: Path, history: list[tuple[str, str]]) -> dict:
    """llama-server's slot save and restore by hand, for the same chat's prompt and follow-up."""
    slots = workdir / "slots"
    slots.mkdir()
    with LlamaServer(path, workdir / "llama-server.log", extra_args=("--slot-save-path", str(slots))) as server:
        # One token: the slot then holds the prompt's tokens exactly, which the follow-up's text goes on from.
        prompt = prompt_text(history)
        first = server.stream(prompt, 1, id_slot=0, cache_prompt=True)
        started = time.perf_counter()
        server.post("/slots/0?action=save", {"filename": "chat.bin"})
        save = time.perf_counter() - started
        server.post("/slots/0?action=erase", {})
        started = time.perf_counter()
        server.post("/slots/0?action=restore", {"filename": "chat.bin"})
        restore = time.perf_counter() - started
        follow_up = f"{prompt} I see.\nHuman: {FOLLOW_UP}\nAssistant:"
        again = server.stream(follow_up, TTFT_TOKENS, id_slot=0, cache_prompt=True)
        return {"cold": first.ttft * 1000, "save": save * 1000, "restore": restore * 1000,
                "follow_up": again.ttft * 1000, "bytes": (slots / "chat.bin").stat().st_size}
