"""Several models: what a reply pays when its model must be loaded in place of another, and whether memory comes back.

The real server, with two more ids for the bundled GGUF (symlinks registered in a catalog of the run's own, so that
what is measured is the server's loading and unloading, not two files' sizes). Each reply is a new chat's, asking
QUESTION for MAX_TOKENS at temperature 0.
Run it alone: `.venv/bin/python -m bench models`. Its table is in docs/benchmarks.md under TITLE.
"""

import statistics
import tempfile
from pathlib import Path

import requests

from bench.common import Server, model_path, stream
from chatapi.llm.catalog import Catalog, ModelEntry

QUESTION = [("Human", "What is the capital of France?")]
MAX_TOKENS = 8
ROUNDS = 5
MODELS = ("bench/tiny-GGUF:A", "bench/tiny-GGUF:B")

TITLE = "Several models: a reply that loads its model"
NOTES = """\
The real server (`bench/models.py`) with two more ids for the bundled GGUF (symlinks in a catalog of the run's
own: the same weights, so that only loading and unloading differ). Each reply is a new chat asking one question
for 8 tokens at temperature 0; the median of 5 rounds. With `CHATAPI_MODELS_LOADED=1` a reply alternately on A
and B makes the other give way (unloaded, then its own loaded) before its first token; with 2 both stay loaded.
The baseline is a reply on the model that is loaded already, in the same run. *load* is what /health reports as
the load's own time; the worker's resident memory is read after one swap and after all of them (a model that
were not freed would add its 250 MB each time)."""


def register(catalog: Catalog, bundled: Path) -> None:
    folder = catalog.hub_dir("bench/tiny-GGUF")
    folder.mkdir(parents=True, exist_ok=True)
    for model_id in MODELS:
        name = f"tiny-{model_id[-1].lower()}.gguf"
        (folder / name).unlink(missing_ok=True)
        (folder / name).symlink_to(bundled)
        size = bundled.stat().st_size
        entry = ModelEntry(model_id, str(folder / name), size, "Q4_K_M", "gemma3", 32768, False, "hub", files=(name,))
        catalog.add(entry)


def reply_on(server: Server, model: str) -> float:
    """Seconds from asking to the first token of a new chat's reply on the model."""
    chat_id = server.new_chat(QUESTION)
    server.http.put(f"{server.url}/chats/update/{chat_id}", json={"model": model}, timeout=10).raise_for_status()
    return stream(server.infer_url(chat_id, MAX_TOKENS)).ttft


def resident_mb(server: Server) -> float:
    (worker,) = server.workers()
    status = Path(f"/proc/{worker}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) / 1024


def load_seconds(server: Server) -> dict[str, float]:
    loaded = requests.get(f"{server.url}/health", timeout=10).json()["model"]["loaded"]
    return {m["id"]: m["load_seconds"] for m in loaded}


def measure(workdir: Path, models_loaded: int) -> dict:
    settings = {"CHATAPI_MODELS_DIR": str(workdir / "models"), "CHATAPI_MODELS_LOADED": str(models_loaded)}
    with Server(workdir / f"loaded-{models_loaded}", model_path(), **settings) as server:
        reply_on(server, MODELS[0])  # warm-up: A loaded
        warm, switched, loads, memory = [], [], [], []
        for _ in range(ROUNDS):
            warm.append(reply_on(server, MODELS[0]))
            switched.append(reply_on(server, MODELS[1]))  # B: loaded in A's place with one model in memory
            loads.append(load_seconds(server).get(MODELS[1]))
            memory.append(resident_mb(server))
            reply_on(server, MODELS[0])  # back to A for the next round
        return {"warm": warm, "switched": switched, "loads": [s for s in loads if s], "memory": memory}


def main() -> str | None:
    with tempfile.TemporaryDirectory(prefix="chatapi-bench-models-") as tmp:
        workdir = Path(tmp)
        for folder in ("loaded-1", "loaded-2"):
            (workdir / folder).mkdir()
        register(Catalog(workdir / "models"), Path(model_path()))
        one, two = measure(workdir, 1), measure(workdir, 2)
    median = statistics.median
    print(f"{'CHATAPI_MODELS_LOADED':24} {'TTFT loaded':>12} {'TTFT other':>12} {'ratio':>7} {'load':>8}")
    for name, run in (("1 (the other gives way)", one), ("2 (both stay loaded)", two)):
        warm, switched = median(run["warm"]) * 1000, median(run["switched"]) * 1000
        load = f"{median(run['loads']) * 1000:.0f} ms" if run["loads"] else "-"
        print(f"{name:24} {warm:9.0f} ms {switched:9.0f} ms {switched / warm:7.2f} {load:>8}")
    first, last = one["memory"][0], one["memory"][-1]
    print(f"worker memory with one model loaded: {first:.0f} MB after 1 swap, {last:.0f} MB after {2 * ROUNDS}")
    return None
