"""Structured output (issue 25): what holding a reply to a JSON Schema costs, and how often it validates.

The real server with its defaults, `POST /v1/chat/completions` with `response_format` through the official `openai`
package. *Grammar's cost*: the looping conversation of *Inference over HTTP* streamed at temperature 0 to
STREAM_TOKENS tokens, unconstrained and held to a schema of one string property (the model loops inside the string,
so both run the whole length), in turns; content chunks per second first to last, constrained over unconstrained,
median of RUNS turns after a warm-up. *Validation*: PROMPTS prompts at temperature 0.7 held to a schema of several
kinds (string, integer, enum, array), each reply parsed and validated with `jsonschema`; a reply cut by max_tokens
(`finish_reason` "length") is counted apart, as the only way a reply may end unfinished.

Run it alone: `.venv/bin/python -m bench structured` (`make bench` runs them all).
"""

import json
import statistics
import tempfile
from pathlib import Path

import jsonschema
import openai

from bench.common import ENDLESS, STREAM_TOKENS, Server, as_messages, completion_stream, model_path

RUNS = 3
PROMPTS = 50
GOAL_VALID = 1.0  # every reply that finished validates
LOOPING = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
RECORD = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 40},
        "year": {"type": "integer"},
        "genre": {"enum": ["drama", "comedy", "documentary"]},
        "cast": {"type": "array", "items": {"type": "string", "maxLength": 30}, "maxItems": 3},
    },
    "required": ["title", "year", "genre", "cast"],
    "additionalProperties": False,
}
SUBJECTS = ["a film about Rome", "a comedy set in Paris", "a documentary on whales", "a drama in Oslo",
            "a film about a chef"]

TITLE = "Structured output"
NOTES = __doc__.split("\n\n", 1)[1].rsplit("\n\nRun it alone", 1)[0]


def response_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema, "strict": True}}


def main() -> None:
    path = model_path()
    print(f"Structured output on /v1: model {Path(path).name}")
    with tempfile.TemporaryDirectory(prefix="chatapi-bench-") as workdir, Server(Path(workdir), path) as server:
        base = server.url
        rates: dict[str, list[float]] = {"unconstrained": [], "json_schema": []}
        for run in range(1 + RUNS):
            plain = completion_stream(base, as_messages(ENDLESS), STREAM_TOKENS)
            held = completion_stream(
                base, as_messages(ENDLESS), STREAM_TOKENS, response_format=response_format(LOOPING)
            )
            if run:
                rates["unconstrained"].append(plain.rate)
                rates["json_schema"].append(held.rate)
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0)
        outcomes = {"valid": 0, "invalid": 0, "cut (length)": 0}
        tokens = []
        for index in range(PROMPTS):
            subject = SUBJECTS[index % len(SUBJECTS)]
            answer = client.chat.completions.create(
                model="gemma-3-270m",
                messages=[{"role": "user", "content": f"Describe {subject} as a record."}],
                response_format=response_format(RECORD),
                temperature=0.7,
                seed=index,
                max_tokens=160,
            )
            choice = answer.choices[0]
            tokens.append(answer.usage.completion_tokens)
            if choice.finish_reason == "length":
                outcomes["cut (length)"] += 1
                continue
            try:
                jsonschema.validate(json.loads(choice.message.content), RECORD)
                outcomes["valid"] += 1
            except (ValueError, jsonschema.ValidationError):
                outcomes["invalid"] += 1
    plain, held = (statistics.median(rates[name]) for name in ("unconstrained", "json_schema"))
    print(f"{'reply (' + str(STREAM_TOKENS) + ' tokens, temperature 0)':40} {'tok/s':>7} {'÷ unconstrained':>16}")
    for name, rate in (("unconstrained", plain), ("held to a schema", held)):
        print(f"{name:40} {rate:7.1f} {rate / plain:16.3f}")
    finished = outcomes["valid"] + outcomes["invalid"]
    share = outcomes["valid"] / finished if finished else 0.0
    print(f"{PROMPTS} prompts at temperature 0.7 held to a 4-property schema: " + ", ".join(
        f"{name} {count}" for name, count in outcomes.items()))
    verdict = "met" if share >= GOAL_VALID else "NOT met"
    print(f"valid of those finished: {share:.0%} (goal {GOAL_VALID:.0%}: {verdict})")
    print(f"completion tokens: median {statistics.median(tokens)}, most {max(tokens)}")
    print("details:")
    for name, values in rates.items():
        print(f"  {name}: runs {', '.join(f'{r:.1f}' for r in values)} tokens/s")
    if server.problems:
        print(f"  server log: {len(server.problems)} error lines, the first: {server.problems[0]}")
