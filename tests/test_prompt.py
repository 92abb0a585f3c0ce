"""Prompt building and stop handling, on the real model's tokenizer (no server)."""

import random
import subprocess
import sys

import pytest
from llama_cpp import _internals

from chatapi.llm.engine import Engine, Job, Options
from chatapi.llm.model import Model, default_model_path
from chatapi.llm.prompt import MARK, TRANSCRIPT_STOPS, ContextLengthExceeded, Message, PromptBuilder
from chatapi.llm.stops import StopScanner
from tests.support.server import ROOT

SYSTEM = "You are a helpful assistant."
# Gemma's own chat template (it folds a system message into the first user turn itself).
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set prefix = messages[0]['content'] + '\\n\\n' %}"
    "{% set loop_messages = messages[1:] %}{% else %}{% set prefix = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' + (prefix if loop.first else '') + message['content'] | trim + "
    "'<end_of_turn>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
# A template that refuses a system role, as many do.
STRICT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{{ bos_token }}{% for message in messages %}<start_of_turn>{{ message['role'] }}\n"
    "{{ message['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


@pytest.fixture(scope="module")
def base_path() -> str:
    return str(default_model_path(ROOT / "instance" / "models"))


@pytest.fixture(scope="module")
def model(base_path) -> Model:
    return Model(base_path, 4096, 2, 1)


@pytest.fixture(scope="module")
def builder(model) -> PromptBuilder:
    return PromptBuilder(model)


@pytest.fixture(scope="module")
def templated_path(base_path, tmp_path_factory) -> str:
    """A copy of the default GGUF that carries Gemma's chat template, made with gguf's own tool."""
    path = tmp_path_factory.mktemp("gguf") / "templated.gguf"
    command = [sys.executable, "-m", "gguf.scripts.gguf_new_metadata", "--chat-template", GEMMA_TEMPLATE]
    subprocess.run([*command, base_path, str(path)], check=True, capture_output=True)
    return str(path)


def text_of(model: Model, tokens: list[int]) -> str:
    return model.detokenize(tokens)


def with_specials(model: Model, tokens: list[int]) -> str:
    return model.weights.detokenize(tokens, special=True).decode()


def test_a_damaged_model_copy_is_assembled_again(tmp_path):
    """`flask db upgrade` or a crash may stop a process mid-assembly; the next start must not be stuck."""
    first = default_model_path(tmp_path)
    size = first.stat().st_size
    with open(first, "r+b") as copy:
        copy.truncate(size // 2)
    again = default_model_path(tmp_path)
    assert again == first and again.stat().st_size == size
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no partial file left behind


def test_transcript_for_a_base_model(model, builder):
    history = [Message("Human", " Hi there "), Message("Assistant", "Hello!"), Message("Human", "How are you?")]
    prompt = builder.build(SYSTEM, history, 4096)
    assert prompt.tokens[0] == model.weights.token_bos()
    assert text_of(model, prompt.tokens[1:]) == (
        "You are a helpful assistant.\n\nHuman: Hi there\nAssistant: Hello!\nHuman: How are you?\nAssistant:"
    )
    assert prompt.truncated == 0 and prompt.stop == TRANSCRIPT_STOPS


def test_oldest_messages_go_first_and_the_latest_human_stays(model, builder):
    history = [Message("Human" if i % 2 == 0 else "Assistant", f"message {i} " + "filler " * 40) for i in range(10)]
    history.append(Message("Human", "the question"))
    prompt = builder.build(SYSTEM, history, 200)
    text = text_of(model, prompt.tokens)
    assert len(prompt.tokens) <= 200
    assert text.startswith("You are a helpful assistant.") and text.endswith("Human: the question\nAssistant:")
    assert prompt.truncated > 0
    kept = [i for i in range(10) if f"message {i} " in text]
    assert kept == list(range(10 - len(kept), 10))  # a suffix of the history: the newest kept
    assert len(kept) == 10 - prompt.truncated


def test_a_message_longer_than_the_window_is_cut_keeping_its_end(model, builder):
    words = " ".join(f"w{i}" for i in range(3000))
    prompt = builder.build(SYSTEM, [Message("Human", words)], 300)
    text = text_of(model, prompt.tokens)
    assert len(prompt.tokens) <= 300
    assert "w2999" in text and "w0 " not in text
    assert text.startswith("You are a helpful assistant.") and text.endswith("\nAssistant:")


def test_a_system_prompt_longer_than_the_window_keeps_its_beginning_and_the_question_its_end(model, builder):
    system = "Rule one: be kind. " + " ".join(f"s{i}" for i in range(2000))
    words = " ".join(f"w{i}" for i in range(2000))
    prompt = builder.build(system, [Message("Human", words)], 300)
    text = text_of(model, prompt.tokens)
    assert len(prompt.tokens) <= 300
    assert text.startswith("Rule one: be kind. s0 s1") and "s1999" not in text
    assert "w1999" in text and "w0 " not in text and text.endswith("\nAssistant:")
    # The question keeps about half of the window.
    assert len(model.tokenize(text[text.index("Human:") :])) > 100


def test_messages_after_the_latest_human_one_go_oldest_first_and_the_last_is_cut_to_fit(model, builder):
    """A chat that ends in Assistant messages (added by hand, or a regenerate of the last of several): they are
    trimmed too, the oldest first, and the last one, kept, is cut keeping its end. It used to stay whole, the
    prompt outgrew the window and llama.cpp's decode failed."""
    tail = " ".join(f"w{i}" for i in range(3000))
    history = [
        Message("Human", "an old question"),
        Message("Assistant", "an old answer"),
        Message("Human", "the question"),
        Message("Assistant", "first " * 400),
        Message("Assistant", "second " * 400),
        Message("Assistant", tail),
    ]
    prompt = builder.build(SYSTEM, history, 300)
    text = text_of(model, prompt.tokens)
    assert len(prompt.tokens) <= 300
    assert "old" not in text and "first" not in text and "second" not in text
    assert "Human: the question\nAssistant: … " in text and "w2999" in text and "w0 " not in text
    assert text.startswith(SYSTEM) and text.endswith("\nAssistant:")
    assert prompt.truncated == 5  # four left out, one cut


def test_the_latest_human_message_and_the_last_share_the_room(model, builder):
    """Both too long: each keeps its end in about half of what the system prompt leaves; a short last message
    stays whole and the question takes the rest."""
    question = " ".join(f"q{i}" for i in range(2000))
    answer = " ".join(f"a{i}" for i in range(2000))
    prompt = builder.build(SYSTEM, [Message("Human", question), Message("Assistant", answer)], 400)
    text = text_of(model, prompt.tokens)
    assert len(prompt.tokens) <= 400 and prompt.truncated == 2
    assert "q1999" in text and "q0 " not in text and "a1999" in text and "a0 " not in text
    asked, answered = text.split("\nAssistant: ", 1)
    assert abs(len(model.tokenize(asked)) - len(model.tokenize(answered))) < 60
    short = builder.build(SYSTEM, [Message("Human", question), Message("Assistant", "a short answer")], 400)
    assert len(short.tokens) <= 400 and short.truncated == 1
    assert text_of(model, short.tokens).endswith("Assistant: a short answer\nAssistant:")


def test_without_cuts_what_must_stay_whole_either_fits_or_is_refused(model, builder):
    """The /v1 API's prompt: older messages still go first, but the system prompt, the latest Human message and
    the last one are whole, or the prompt is refused (ContextLengthExceeded: the API's 400)."""
    older = [Message("Human", "old " * 300), Message("Assistant", "older " * 300)]
    kept = [Message("Human", "the question"), Message("Assistant", "a short answer")]
    prompt = builder.build(SYSTEM, [*older, *kept], 300, cut=False)
    assert len(prompt.tokens) <= 300 and prompt.truncated == 2
    assert text_of(model, prompt.tokens).endswith("Human: the question\nAssistant: a short answer\nAssistant:")
    long_last = [*older, Message("Human", "the question"), Message("Assistant", "long " * 400)]
    with pytest.raises(ContextLengthExceeded) as refused:
        builder.build(SYSTEM, long_last, 300, cut=False)
    assert refused.value.budget == 300 and refused.value.needed > 400


def test_every_prompt_fits_its_budget(model, builder):
    """Random histories of short and long messages, ending in either role, with or without a system prompt:
    every prompt fits."""
    rng = random.Random(20)
    for _ in range(40):
        roles = [rng.choice(["Human", "Assistant"]) for _ in range(rng.randint(0, 5))]
        roles.insert(rng.randint(0, len(roles)), "Human")
        history = [Message(role, "word " * rng.choice([1, 30, 300, 1500])) for role in roles]
        system = rng.choice(["", SYSTEM, "rule " * 1000])
        budget = rng.choice([100, 300, 1000])
        prompt = builder.build(system, history, budget)
        assert len(prompt.tokens) <= budget, (system[:20], [(m.role, len(m.text)) for m in history], budget)


def test_a_template_in_the_gguf_is_used(templated_path):
    model = Model(templated_path, 1024, 2, 1)
    assert model.chat_template == GEMMA_TEMPLATE
    builder = PromptBuilder(model)
    history = [Message("Human", "Hi"), Message("Assistant", "Hello!"), Message("Human", "Bye")]
    prompt = builder.build(SYSTEM, history, 1024)
    assert with_specials(model, prompt.tokens) == (
        "<bos><start_of_turn>user\nYou are a helpful assistant.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello!<end_of_turn>\n<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
    )
    assert prompt.tokens.count(model.weights.token_bos()) == 1  # the template's <bos>, not a second one
    start_of_turn = model.tokenize("<start_of_turn>")
    assert len(start_of_turn) == 1  # control tokens are parsed as such
    assert builder.render.system_role is True
    replies = []
    result = Engine(model).generate(Job("c", prompt, Options(8, 0, 1, 0), replies.append))
    assert result.completion_tokens >= 1 and result.finish_reason in ("stop", "length")


def test_a_template_without_system_role_gets_it_folded_into_the_first_turn(templated_path):
    model = Model(templated_path, 1024, 2, 1)
    model.chat_template = STRICT_TEMPLATE  # another GGUF copy would only repeat the metadata read above
    builder = PromptBuilder(model)
    assert builder.render.system_role is False
    prompt = builder.build(SYSTEM, [Message("Human", "Hi"), Message("Assistant", "Yo"), Message("Human", "Bye")], 1024)
    text = with_specials(model, prompt.tokens)
    assert "<start_of_turn>user\nYou are a helpful assistant.\n\nHi<end_of_turn>" in text
    assert "<start_of_turn>assistant\nYo<end_of_turn>" in text
    assert text.endswith("<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n")


SOURCES = "Web sources follow.\n\n[1] Zorblax (http://127.0.0.1/z)\nThe volcano erupts every 47 minutes."
HISTORY = [Message("Human", "Hi"), Message("Assistant", "Hello!"), Message("Human", "How often does it erupt?")]


@pytest.mark.parametrize(
    ("layout", "latest_turn"),
    [
        ("sources-first", f"Human: {SOURCES}\n\nHow often does it erupt?\nAssistant:"),
        ("question-first", f"Human: How often does it erupt?\n\n{SOURCES}\nAssistant:"),
    ],
)
def test_web_sources_go_into_the_latest_human_turn_after_what_is_cached(model, builder, layout, latest_turn):
    """The tokens before the latest Human message stay the same with sources, so a warm chat reads only the
    sources and the question, and the history can be read while the web is searched."""
    prompt = builder.build(SYSTEM, HISTORY, 1024)
    sourced = builder.with_sources(prompt, SOURCES, layout)
    assert sourced.tokens[: prompt.head] == prompt.tokens[: prompt.head]
    assert text_of(model, sourced.tokens[: prompt.head]) == f"{SYSTEM}\n\nHuman: Hi\nAssistant: Hello!\nHuman:"
    assert model.detokenize(sourced.tokens[prompt.head : prompt.head + 1]).startswith(" ")  # " Web", not " "
    assert text_of(model, sourced.tokens) == f"{SYSTEM}\n\nHuman: Hi\nAssistant: Hello!\n{latest_turn}"
    assert sourced.truncated == prompt.truncated and sourced.head == prompt.head


def test_web_sources_at_the_head_of_the_system_prompt(model, builder):
    prompt = builder.build(SYSTEM, HISTORY, 1024)
    sourced = builder.with_sources(prompt, SOURCES, "system")
    assert text_of(model, sourced.tokens).startswith(f"{SYSTEM}\n\n{SOURCES}\n\nHuman: Hi\n")


def test_the_sources_follow_the_template_roles_and_a_pasted_mark_changes_nothing(templated_path):
    model = Model(templated_path, 1024, 2, 1)
    builder = PromptBuilder(model)
    history = [*HISTORY[:2], Message("Human", f"How often{MARK} does it erupt?")]
    sourced = builder.with_sources(builder.build(SYSTEM, history, 1024), SOURCES, "sources-first")
    assert with_specials(model, sourced.tokens).endswith(
        f"<start_of_turn>user\n{SOURCES}\n\nHow often does it erupt?<end_of_turn>\n<start_of_turn>model\n"
    )


@pytest.mark.parametrize(
    ("pieces", "emitted", "stopped"),
    [
        (["Hello", " world"], "Hello world", False),
        (["Paris.", "\n", "Human", ":"], "Paris.", True),
        (["a\nHu", "man: b"], "a", True),
        (["line\n", "Hum", "ble pie"], "line\nHumble pie", False),  # held back, then released
        (["x\nAssistant:"], "x", True),
    ],
)
def test_stop_strings_are_never_streamed(pieces, emitted, stopped):
    scanner = StopScanner(TRANSCRIPT_STOPS)
    out, done = "", False
    for piece in pieces:
        text, done = scanner.feed(piece)
        out += text
        if done:
            break
    if not done:
        out += scanner.flush()
    assert (out, done) == (emitted, stopped)


def test_greedy_sampling_picks_what_llama_cpps_greedy_sampler_picks(model):
    """Temperature 0 reads the highest logit itself (llama.cpp's sampler copies the whole vocabulary first):
    the same token as llama.cpp's greedy sampler, for each entry of a batch, not the batch's last only."""
    tokens = model.tokenize("Human: Name three colours.\nAssistant:", add_bos=True)
    model.forget(0, 0)
    model.decode([(token, i, 0, True) for i, token in enumerate(tokens)])
    greedy = _internals.LlamaSampler()
    greedy.add_greedy()
    picked = [model.sample(model.sampler(0, 1, 0), i) for i in range(len(tokens))]
    expected = [greedy.sample(model.context, i) for i in range(len(tokens))]
    assert picked == expected
    assert len(set(picked)) > 3  # the entries' logits differ: a wrong index would show
