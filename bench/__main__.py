"""Run the benchmarks: `.venv/bin/python -m bench [NAME ...]` (`make bench` runs them all). Prints each table and
writes it to docs/benchmarks.md under the benchmark's TITLE, after its NOTES (each module carries its own); with
names (list_chats, search, inference, batching, first_token, chunks, internet, answers, load, openai, remote, models,
kv_disk, stops, structured, embeddings, soak) only those run and their
sections are replaced. The page's sections that no benchmark writes (after the tables) are written by hand and kept.
`.venv/bin/python -m bench --list` lists the benchmarks and runs nothing."""

import contextlib
import io
import os
import platform
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path

from bench import (
    answers,
    batching,
    chunks,
    embeddings,
    first_token,
    inference,
    internet,
    kv_disk,
    list_chats,
    load,
    models,
    openai_api,
    remote,
    search,
    soak,
    stops,
    structured,
)

PAGE = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


class Tee(io.TextIOBase):
    """Writes to the terminal and keeps a copy."""

    def __init__(self, terminal):
        self.terminal = terminal
        self.copy = io.StringIO()

    def write(self, text: str) -> int:
        self.terminal.write(text)
        self.terminal.flush()
        return self.copy.write(text)


def run(benchmark) -> str:
    """The benchmark's output as Markdown: its table, headed in bold by the warning it may return
    (a database it could not measure), so that a partial table cannot pass for a whole one."""
    tee = Tee(sys.stdout)
    with contextlib.redirect_stdout(tee):
        warning = benchmark()
    table = f"```text\n{tee.copy.getvalue().rstrip()}\n```"
    return f"**{warning}**\n\n{table}" if warning else table


def machine() -> str:
    import llama_cpp

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    gpu = "GPU offload available" if llama_cpp.llama_supports_gpu_offload() else "no GPU (CPU-only llama.cpp)"
    return (
        f"{os.cpu_count()} CPU cores ({cpu}), {gpu}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, llama-cpp-python {llama_cpp.__version__}"
    )


BENCHMARKS = {
    "list_chats": list_chats,
    "search": search,
    "inference": inference,
    "batching": batching,
    "first_token": first_token,
    "chunks": chunks,
    "internet": internet,
    "answers": answers,
    "load": load,
    "openai": openai_api,
    "remote": remote,
    "models": models,
    "kv_disk": kv_disk,
    "stops": stops,
    "structured": structured,
    "embeddings": embeddings,
    "soak": soak,
}


def earlier_sections() -> dict[str, str]:
    """The page's sections as the last run (or a hand) wrote them, by title, in their order."""
    if not PAGE.exists():
        return {}
    sections = PAGE.read_text().split("\n## ")[1:]
    return dict(section.rstrip().split("\n\n", 1) for section in sections)


def main(names: list[str]) -> None:
    if names == ["--list"]:
        for name, module in BENCHMARKS.items():
            print(f"{name:12} {module.TITLE}")
        return
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        raise SystemExit(f"unknown benchmark {', '.join(unknown)}; there are {', '.join(BENCHMARKS)}")
    now = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    earlier = earlier_sections()
    titles = [module.TITLE for module in BENCHMARKS.values()]
    sections = {title: text for title, text in earlier.items() if title in titles} if names else {}
    for name in names or BENCHMARKS:
        module = BENCHMARKS[name]
        when = f"\n\nRun alone: `.venv/bin/python -m bench {name}`, {now}." if names else ""
        sections[module.TITLE] = f"{module.NOTES}{when}\n\n{run(module.main)}"
    lines = [
        "# Benchmarks",
        "",
        f"Command: `make bench` (`.venv/bin/python -m bench`). Run: {now}.",
        f"Machine: {machine()}.",
        "",
        "Every run rewrites the benchmarks' sections; their tables are the benchmarks' own output. A section run "
        "alone (`.venv/bin/python -m bench NAME`) says when it ran; the others are from the run above. The sections "
        "after the tables are written by hand, and every run keeps them.",
    ]
    if names and PAGE.exists():  # the header of the last whole run stays
        lines = PAGE.read_text().split("\n## ")[0].rstrip().splitlines()
    for title in titles:
        if title in sections:
            lines += ["", f"## {title}", "", sections[title]]
    for title, text in earlier.items():
        if title not in titles:
            lines += ["", f"## {title}", "", text]
    PAGE.parent.mkdir(exist_ok=True)
    PAGE.write_text("\n".join(lines) + "\n")
    print(f"written to {PAGE.relative_to(PAGE.parent.parent)}")


if __name__ == "__main__":
    # Terminated, a run still leaves through its `with` blocks, which stop the servers it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    main(sys.argv[1:])
