"""rg-server through the official `openai` Python package: a client nobody here wrote, so
what it parses and raises is what every OpenAI-speaking front-end will see.

Expected values come from the API's own contracts (a stream concatenates to the answer, the
same seed gives the same sample, a stop string ends the text before it, usage adds up) and
from Gemma's documented turn format, not from outputs of our own code.
"""

import threading
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from conftest import API_KEY, MODEL_ID

FORTUNE = [{"role": "user", "content": "Tell me my fortune."}]


def chat(client, messages=FORTUNE, **kwargs):
    kwargs.setdefault("max_tokens", 24)
    return client.chat.completions.create(model=MODEL_ID, messages=messages, **kwargs)


def text_of(completion):
    return completion.choices[0].message.content


def streamed_chunks(client, messages=FORTUNE, **kwargs):
    kwargs.setdefault("max_tokens", 24)
    stream = client.chat.completions.create(
        model=MODEL_ID, messages=messages, stream=True, **kwargs
    )
    return list(stream)


def streamed_text(chunks, index=0):
    return "".join(
        c.delta.content or "" for ch in chunks for c in ch.choices if c.index == index
    )


def gemma_prompt(turns):
    """Gemma's turn format, as its model card writes it, ending with the model's turn."""
    text = "".join(f"<start_of_turn>{role}\n{content}<end_of_turn>\n" for role, content in turns)
    return text + "<start_of_turn>model\n"


# --- chat, usage ---------------------------------------------------------------------------


def test_chat_answer_and_usage(client, server):
    r = chat(client, max_tokens=16, temperature=0, logprobs=True)
    assert r.object == "chat.completion"
    assert r.model == MODEL_ID
    assert r.id
    assert len(r.choices) == 1
    choice = r.choices[0]
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content
    assert choice.finish_reason in ("stop", "length")

    usage = r.usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert 1 <= usage.completion_tokens <= 16
    if choice.finish_reason == "length":
        assert usage.completion_tokens == 16
    # One logprobs entry per generated token.
    assert len(choice.logprobs.content) == usage.completion_tokens
    if choice.finish_reason == "length":
        assert "".join(t.token for t in choice.logprobs.content) == choice.message.content
    # The prompt is Gemma's turn format (with BOS) and nothing else.
    template = gemma_prompt([("user", "Tell me my fortune.")])
    assert usage.prompt_tokens == len(server.tokenize(template))


@pytest.mark.parametrize(
    "messages, turns",
    [
        (
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}],
            # Gemma has no system role: the system text opens the first user turn.
            [("user", "Be brief.\n\nHello")],
        ),
        (
            [
                {"role": "user", "content": "Hello"},
                {"role": "assistant", "content": "Good luck awaits."},
                {"role": "user", "content": "More?"},
            ],
            [("user", "Hello"), ("model", "Good luck awaits."), ("user", "More?")],
        ),
    ],
    ids=["system", "three-turns"],
)
def test_prompt_tokens_follow_the_gemma_template(client, server, messages, turns):
    r = chat(client, messages=messages, max_tokens=1, temperature=0)
    assert r.usage.prompt_tokens == len(server.tokenize(gemma_prompt(turns)))
    assert r.usage.completion_tokens == 1


def test_logprobs_greedy_picks_the_top_token(client):
    r = chat(client, max_tokens=12, temperature=0, logprobs=True, top_logprobs=3)
    entries = r.choices[0].logprobs.content
    assert entries
    for e in entries:
        assert e.logprob <= 0.0
        top = e.top_logprobs
        assert len(top) == 3
        assert [t.logprob for t in top] == sorted((t.logprob for t in top), reverse=True)
        # Greedy decoding chose the most likely token.
        assert e.token == top[0].token
        assert e.logprob == pytest.approx(top[0].logprob, abs=1e-4)


# --- streaming -----------------------------------------------------------------------------


def test_stream_concatenates_to_the_greedy_answer(client):
    whole = chat(client, temperature=0)
    chunks = streamed_chunks(
        client, temperature=0, stream_options={"include_usage": True}
    )
    assert len({ch.id for ch in chunks}) == 1
    assert all(ch.object == "chat.completion.chunk" for ch in chunks)
    assert streamed_text(chunks) == text_of(whole)
    # Streamed token by token, not in one piece.
    assert sum(1 for ch in chunks for c in ch.choices if c.delta.content) >= 2
    finishes = [c.finish_reason for ch in chunks for c in ch.choices if c.finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    # include_usage: usage only in the last chunk, which has no choices.
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert all(ch.usage is None for ch in chunks[:-1])
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[-1].usage.total_tokens == whole.usage.total_tokens


def test_stream_without_include_usage_has_no_usage(client):
    chunks = streamed_chunks(client, max_tokens=8, temperature=0)
    assert chunks
    assert all(ch.usage is None for ch in chunks)
    assert all(ch.choices for ch in chunks)


# --- stop strings --------------------------------------------------------------------------


def pick_stop(text, start):
    """A 3-character piece of `text` whose first occurrence is at or after `start`."""
    for k in range(start, len(text) - 3):
        piece = text[k : k + 3]
        if text.find(piece) == k:
            return k, piece
    pytest.fail(f"no usable stop string in {text!r}")


def test_stop_string_ends_the_text_before_it(client):
    messages = [{"role": "user", "content": "A fortune about the sea, please."}]
    base = text_of(chat(client, messages=messages, max_tokens=40, temperature=0))
    assert len(base) >= 12, f"answer too short to cut: {base!r}"
    k, stop = pick_stop(base, len(base) // 2)

    r = chat(client, messages=messages, max_tokens=40, temperature=0, stop=[stop])
    assert text_of(r) == base[:k]
    assert r.choices[0].finish_reason == "stop"

    # Streamed, the stop string may span chunks: the text still ends before it.
    chunks = streamed_chunks(client, messages=messages, max_tokens=40, temperature=0, stop=stop)
    assert streamed_text(chunks) == base[:k]

    # Of several stop strings, the one that occurs first ends the text.
    k2, early = pick_stop(base, len(base) // 4)
    assert k2 < k
    r = chat(client, messages=messages, max_tokens=40, temperature=0, stop=[stop, early])
    assert text_of(r) == base[:k2]


# --- seeds and n ---------------------------------------------------------------------------


def test_seed_makes_sampling_reproducible(client):
    sampled = dict(max_tokens=24, temperature=0.8)
    a = text_of(chat(client, seed=1234, **sampled))
    b = text_of(chat(client, seed=1234, **sampled))
    assert a == b
    # Streaming samples the same way.
    assert streamed_text(streamed_chunks(client, seed=1234, **sampled)) == a
    # Other seeds give other samples (not every one of five equal).
    others = {text_of(chat(client, seed=s, **sampled)) for s in range(1, 6)}
    assert len(others | {a}) > 1


def test_n_choices_are_reproducible_with_a_seed(client):
    sampled = dict(max_tokens=20, temperature=0.9, seed=77, n=3, logprobs=True)
    r = chat(client, **sampled)
    assert sorted(c.index for c in r.choices) == [0, 1, 2]
    texts = [c.message.content for c in sorted(r.choices, key=lambda c: c.index)]
    # The three forks sample independently.
    assert len(set(texts)) > 1, texts
    # usage counts the tokens of all choices.
    assert r.usage.completion_tokens == sum(len(c.logprobs.content) for c in r.choices)

    again = chat(client, **sampled)
    assert [c.message.content for c in sorted(again.choices, key=lambda c: c.index)] == texts

    chunks = streamed_chunks(client, **sampled)
    assert [streamed_text(chunks, i) for i in range(3)] == texts


def test_n_greedy_choices_are_equal(client):
    r = chat(client, max_tokens=12, temperature=0, n=3)
    assert len(r.choices) == 3
    assert len({c.message.content for c in r.choices}) == 1
    assert r.choices[0].message.content == text_of(chat(client, max_tokens=12, temperature=0))


# --- completions, models -------------------------------------------------------------------


def test_completions_text_and_token_ids_agree(client, server):
    prompt = "The secret of happiness is"
    r = client.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=16, temperature=0)
    assert r.object == "text_completion"
    assert r.model == MODEL_ID
    text = r.choices[0].text
    assert text
    assert r.choices[0].finish_reason in ("stop", "length")
    ids = server.tokenize(prompt)
    assert r.usage.prompt_tokens == len(ids)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens

    by_ids = client.completions.create(model=MODEL_ID, prompt=ids, max_tokens=16, temperature=0)
    assert by_ids.choices[0].text == text
    assert by_ids.usage.prompt_tokens == len(ids)

    stream = client.completions.create(
        model=MODEL_ID, prompt=ids, max_tokens=16, temperature=0, stream=True
    )
    assert "".join(ch.choices[0].text for ch in stream if ch.choices) == text


def test_models_list(client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL_ID]
    assert models.data[0].object == "model"


# --- many clients at once ------------------------------------------------------------------

TOPICS = [
    "love", "money", "the sea", "travel", "friends", "work", "cats", "rain",
    "music", "dreams", "the moon", "bread", "time", "luck", "books", "winter",
]


def test_concurrent_greedy_clients_get_what_they_get_alone(server):
    """16 clients, more than the server's 8 slots, with different prompts and lengths, half
    of them streaming: each answer must equal the one the same request gets alone."""

    def ask(i, client=None):
        client = client or server.client()
        messages = [{"role": "user", "content": f"A fortune about {TOPICS[i]}."}]
        kwargs = dict(messages=messages, max_tokens=40 + (i * 13) % 60, temperature=0)
        if i % 2:
            return streamed_text(streamed_chunks(client, **kwargs))
        return text_of(chat(client, **kwargs))

    steps_before = server.metrics()["rgemma_decode_steps_total"]
    alone = [ask(i) for i in range(len(TOPICS))]
    assert len(set(alone)) > 1
    steps_alone = server.metrics()["rgemma_decode_steps_total"] - steps_before

    barrier = threading.Barrier(len(TOPICS))
    clients = [server.client() for _ in TOPICS]

    def ask_together(i):
        barrier.wait(timeout=30)
        return ask(i, clients[i])

    steps_before = server.metrics()["rgemma_decode_steps_total"]
    with ThreadPoolExecutor(len(TOPICS)) as pool:
        together = list(pool.map(ask_together, range(len(TOPICS))))
    steps_together = server.metrics()["rgemma_decode_steps_total"] - steps_before
    # Together the requests shared decode steps (else this did not test batching).
    assert steps_together < steps_alone, (steps_together, steps_alone)
    for i, (a, t) in enumerate(zip(alone, together)):
        assert t == a, f"client {i} ({TOPICS[i]}): alone {a!r}, together {t!r}"


# --- auth and bad requests -----------------------------------------------------------------


def test_api_key_is_required(start_server):
    s = start_server("-np", "2", "-t", "1", "--api-key", API_KEY)
    for key in ("wrong-key", API_KEY + "x"):
        with pytest.raises(openai.AuthenticationError):
            chat(s.client(api_key=key), max_tokens=2)
        with pytest.raises(openai.AuthenticationError):
            s.client(api_key=key).models.list()
    # No Authorization header at all.
    with pytest.raises(openai.AuthenticationError):
        chat(s.client(), max_tokens=2, extra_headers={"Authorization": openai.Omit()})

    good = s.client(api_key=API_KEY)
    r = chat(good, max_tokens=4, temperature=0)
    assert r.choices[0].message.content is not None
    assert [m.id for m in good.models.list().data] == [MODEL_ID]


BAD_CHAT = [
    ("messages", dict(messages=[])),
    ("messages", dict(messages=[{"role": "wizard", "content": "hi"}])),
    ("max_tokens", dict(max_tokens=-1)),
    ("temperature", dict(temperature=-1.0)),
    ("temperature", dict(temperature="hot")),
    ("top_p", dict(top_p=1.5)),
    ("n", dict(n=0)),
    ("seed", dict(seed="abc")),
    ("top_logprobs", dict(top_logprobs=3)),
    ("stop", dict(stop=42)),
]


@pytest.mark.parametrize(
    "field, kwargs", BAD_CHAT, ids=[f"{f}-{i}" for i, (f, _) in enumerate(BAD_CHAT)]
)
def test_bad_chat_request_names_the_field(client, field, kwargs):
    kwargs = {"messages": FORTUNE, "max_tokens": 4, **kwargs}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL_ID, **kwargs)
    assert_names_field(e.value, field)


BAD_COMPLETION = [
    ("prompt", dict(prompt=[10**9])),
    ("prompt", dict(prompt=[])),
    ("max_tokens", dict(prompt="Hi", max_tokens=10**9)),
]


@pytest.mark.parametrize(
    "field, kwargs", BAD_COMPLETION, ids=[f"{f}-{i}" for i, (f, _) in enumerate(BAD_COMPLETION)]
)
def test_bad_completion_request_names_the_field(client, field, kwargs):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL_ID, **kwargs)
    assert_names_field(e.value, field)


def assert_names_field(error, field):
    assert error.status_code == 400
    assert field in error.message, error.message
    body = error.body if isinstance(error.body, dict) else {}
    if body.get("param") is not None:
        assert body["param"].startswith(field), body
    assert body.get("type") == "invalid_request_error", body


def test_server_still_answers_after_bad_requests(client):
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL_ID, messages=[], max_tokens=4)
    assert text_of(chat(client, max_tokens=4, temperature=0))
