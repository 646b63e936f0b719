"""Errors become Python exceptions with the engine's message; threads; Ctrl-C."""

import os
import signal
import threading
import time

import numpy as np
import pytest

import rgemma
from conftest import MODEL_Q8


def test_missing_and_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such.gguf"):
        rgemma.Model(tmp_path / "no-such.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + os.urandom(200))
    with pytest.raises(ValueError):
        rgemma.Model(bad)
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(MODEL_Q8.read_bytes()[:100_000])
    with pytest.raises(ValueError):
        rgemma.Model(truncated)
    with pytest.raises(FileNotFoundError):
        rgemma.Tokenizer(tmp_path / "no-such.gguf")
    with pytest.raises(TypeError):
        rgemma.Model(None)


def test_bad_arguments(model_q8):
    n = model_q8.n_vocab
    with pytest.raises(ValueError, match="n_threads"):
        rgemma.Model(MODEL_Q8, n_threads=0)
    ctx = rgemma.Context(model_q8)
    with pytest.raises(ValueError, match="no logits"):
        ctx.logits()
    with pytest.raises(ValueError, match=str(n)):
        ctx.eval([1, n])
    with pytest.raises(ValueError, match="-1"):
        ctx.eval([-1])
    with pytest.raises(ValueError):
        ctx.eval([])
    assert ctx.n_past == 0  # nothing ran
    with pytest.raises(TypeError):
        ctx.eval("hello")
    with pytest.raises(ValueError, match="kv_type"):
        rgemma.Context(model_q8, kv_type="q8")
    with pytest.raises(ValueError, match="batch_size"):
        rgemma.Context(model_q8, batch_size=0)
    with pytest.raises(ValueError, match="temperature"):
        model_q8.generate("x", temperature=float("nan"))
    with pytest.raises(ValueError, match="presence"):
        model_q8.generate("x", presence_penalty=3.0)
    with pytest.raises(ValueError, match="out of range"):
        model_q8.generate([1, n + 5])
    with pytest.raises(ValueError, match="empty prompt"):
        model_q8.generate([])
    with pytest.raises(ValueError, match="empty prompt"):
        model_q8.stream([])
    with pytest.raises(TypeError):
        model_q8.generate("x", stop=[1])
    with pytest.raises(ValueError, match="role"):
        model_q8.create_chat_completion([{"role": "wizard", "content": "hi"}])
    with pytest.raises(ValueError, match="content"):
        model_q8.create_chat_completion([{"role": "user"}])
    with pytest.raises(ValueError, match="at least one"):
        model_q8.create_chat_completion([])
    with pytest.raises(ValueError, match="-3"):
        model_q8.detokenize([-3])


def test_bad_states_change_nothing(model_q8):
    ctx = rgemma.Context(model_q8)
    ctx.eval(model_q8.tokenize("The best way to"))
    before = ctx.logits().copy()
    state = ctx.save_state()
    for bad in (b"", b"garbage", state[:-1], state[:100] + bytes(len(state) - 100)):
        with pytest.raises(ValueError):
            ctx.load_state(bad)
        assert ctx.n_past == 5
        np.testing.assert_array_equal(ctx.logits(), before)
    with pytest.raises(TypeError):
        ctx.load_state(None)


def test_batch_errors(model_q8):
    batch = rgemma.BatchContext(model_q8, n_seq_max=2, batch_size=4)
    with pytest.raises(ValueError, match="out of range"):
        batch.decode([1], [2])
    with pytest.raises(ValueError, match="invalid sequence"):
        batch.decode([1], [-1])
    with pytest.raises(ValueError, match="seq_ids"):
        batch.decode([1, 2], [0])
    with pytest.raises(ValueError, match="batch_size"):
        batch.decode([1] * 5, [0] * 5)
    with pytest.raises(ValueError, match="empty"):
        batch.decode([], [])
    with pytest.raises(ValueError, match="out of range"):
        batch.seq_copy(0, 5)
    with pytest.raises(ValueError, match="out of range"):
        batch.seq_clear(-1)
    with pytest.raises(ValueError, match="no logits"):
        batch.seq_logits(0)
    assert batch.seq_position(0) == batch.seq_position(1) == 0
    with pytest.raises(ValueError, match="n_seq_max"):
        rgemma.BatchContext(model_q8, n_seq_max=0)


def test_two_threads_two_contexts_of_one_model(model_q8):
    prompts = ["The meaning of life is", "Once upon a time"]
    ids = [model_q8.tokenize(p) for p in prompts]

    def greedy(prompt_ids, out, i):
        ctx = rgemma.Context(model_q8, n_threads=1)
        sampler = rgemma.Sampler(temperature=0)
        ctx.eval(prompt_ids)
        toks = []
        for _ in range(64):
            t = ctx.sample(sampler)
            sampler.accept(t)
            toks.append(t)
            ctx.eval([t])
        out[i] = toks

    alone = [None, None]
    for i in range(2):
        greedy(ids[i], alone, i)
    together = [None, None]
    threads = [threading.Thread(target=greedy, args=(ids[i], together, i)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert together == alone
    # Two threads generating through the model's own context take turns safely.
    texts = [None, None]

    def gen(i):
        texts[i] = model_q8.generate(prompts[i], max_tokens=32, temperature=0)

    threads = [threading.Thread(target=gen, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert texts == [model_q8.generate(p, max_tokens=32, temperature=0) for p in prompts]


@pytest.fixture
def sigint_raises():
    """SIGINT raises KeyboardInterrupt during the test, even where the test runner was started
    with SIGINT ignored (a background job of a non-interactive shell)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def interrupt_in(seconds):
    timer = threading.Timer(seconds, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    return timer


def test_ctrl_c_stops_a_long_generation(model_q8, sigint_raises):
    prompt = model_q8.tokenize("The best way to")
    sampler = rgemma.Sampler(temperature=1.0, seed=1)
    # No stop token: only the interrupt (or, if it failed, the bound) ends these.
    bound = 200_000
    timer = interrupt_in(0.5)
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        model_q8._complete(prompt, sampler, bound, [], [])
    assert time.monotonic() - t0 < 30
    timer.join()
    # The model is still usable, and so is a stream after an interrupt.
    assert model_q8.generate("The best way to", max_tokens=4, temperature=0)
    stream = model_q8._stream(prompt, sampler, bound, [], [])
    timer = interrupt_in(0.5)
    with pytest.raises(KeyboardInterrupt):
        for _ in stream:
            pass
    timer.join()
    assert model_q8.generate("The best way to", max_tokens=4, temperature=0)
