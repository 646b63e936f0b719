"""Generation and logits through Python against `rg-run --logits-out` and the official
implementation's logits stored beside the bundled model."""

import json

import numpy as np
import pytest

import rgemma
from conftest import MODEL_F32, MODEL_Q8, ROOT, binary, read_safetensors, run

REFERENCE = ROOT / "models" / "tiny-fortunes" / "reference.json"
REFERENCE_LOGITS = ROOT / "models" / "tiny-fortunes" / "reference_logits.safetensors"


def rg_run_greedy(model_path, prompt_ids, n, tmp_path, threads=2):
    ids_out, logits_out = tmp_path / "ids.json", tmp_path / "logits.npy"
    run([binary("rg-run"), "-m", model_path, "--prompt-ids", ",".join(map(str, prompt_ids)),
         "-n", n, "--temp", 0, "-t", threads, "--ids-out", ids_out, "--logits-out", logits_out])
    return json.loads(ids_out.read_text()), np.load(logits_out)


def python_greedy(model, prompt_ids, n):
    """Every logits row (prompt positions, then each fed-back token) and the greedy ids,
    through Context.eval / logits / sample."""
    ctx = rgemma.Context(model)
    ctx.eval(prompt_ids, all_logits=True)
    rows = [ctx.all_logits()]
    sampler = rgemma.Sampler(temperature=0)
    generated = []
    for i in range(n):
        tok = ctx.sample(sampler)
        sampler.accept(tok)
        generated.append(tok)
        if i + 1 < n:
            ctx.eval([tok])
            rows.append(ctx.logits()[None, :])
    return generated, np.concatenate(rows)


@pytest.mark.parametrize("path", [MODEL_Q8, MODEL_F32], ids=["q8_0", "f32"])
def test_greedy_ids_and_every_logits_row_equal_rg_run(path, tmp_path):
    model = rgemma.Model(path, n_threads=2)
    prompt = model.tokenize("The meaning of life is")
    want, want_rows = rg_run_greedy(path, prompt, 24, tmp_path)
    got, rows = python_greedy(model, prompt, 24)
    assert got == want["generated_ids"]
    assert rows.shape == want_rows.shape == (len(prompt) + 23, model.n_vocab)
    # The same engine and kernels: the same bits.
    np.testing.assert_array_equal(rows, want_rows)
    # Model.generate gives the same tokens and text.
    text = model.generate(prompt, max_tokens=24, temperature=0)
    assert text == model.detokenize(want["generated_ids"])


def test_logits_match_the_official_implementation(model_f32):
    ref = read_safetensors(REFERENCE_LOGITS)
    ctx = rgemma.Context(model_f32, batch_size=7)  # several chunks
    ctx.eval(ref["input_ids"].tolist(), all_logits=True)
    rows = ctx.all_logits()
    assert rows.shape == ref["logits"].shape
    assert np.abs(rows - ref["logits"]).max() <= 1e-4


def test_greedy_text_matches_the_official_implementation(model_f32):
    ref = json.loads(REFERENCE.read_text())["greedy"]
    assert model_f32.tokenize(ref["prompt"]) == ref["prompt_ids"]
    stream = model_f32.stream(ref["prompt"], max_tokens=len(ref["gen_ids"]), temperature=0)
    text = "".join(stream)
    assert stream.tokens == ref["gen_ids"]
    assert text == ref["gen_text"]
    assert stream.finish_reason == "length"
    assert stream.prompt_tokens == len(ref["prompt_ids"])


def test_stream_pieces_join_to_the_generated_text(model_q8):
    kw = dict(max_tokens=48, temperature=0.9, seed=7)
    whole = model_q8.generate("Once upon a time", **kw)
    pieces = list(model_q8.stream("Once upon a time", **kw))
    assert len(pieces) > 5
    assert all(pieces)
    assert "".join(pieces) == whole


def test_seeds_reproduce(model_q8):
    kw = dict(max_tokens=40, temperature=1.0)
    a = model_q8.generate("The best way to", seed=123, **kw)
    b = model_q8.generate("The best way to", seed=123, **kw)
    c = model_q8.generate("The best way to", seed=124, **kw)
    assert a == b
    assert a != c
    sampler = rgemma.Sampler(seed=5)
    assert sampler.seed == 5
    assert rgemma.Sampler().seed != rgemma.Sampler().seed


def test_stop_strings_and_max_tokens(model_q8):
    full = model_q8.generate("The meaning of life is", max_tokens=32, temperature=0)
    assert "Winston" in full
    cut = model_q8.generate("The meaning of life is", max_tokens=32, temperature=0, stop=["Winston"])
    assert cut == full[: full.index("Winston")]
    stream = model_q8.stream("The meaning of life is", max_tokens=32, temperature=0, stop="Winston")
    assert "".join(stream) == cut and stream.finish_reason == "stop"
    stream = model_q8.stream("The meaning of life is", max_tokens=5, temperature=0)
    list(stream)
    assert len(stream.tokens) == 5 and stream.finish_reason == "length"
    assert model_q8.generate("The meaning of life is", max_tokens=0) == ""


def test_state_save_and_load_give_bit_identical_logits(model_q8):
    prompt = model_q8.tokenize("A circus foreman was making the rounds")
    more = model_q8.tokenize(" inspecting the big top", add_bos=False)
    ctx = rgemma.Context(model_q8)
    ctx.eval(prompt)
    state = ctx.save_state()
    assert isinstance(state, bytes) and len(state) > ctx.state_size > 0
    before = ctx.logits()
    ctx.eval(more, all_logits=True)
    want = ctx.all_logits()
    # The array handed out before the eval kept its values.
    assert not np.array_equal(before, ctx.logits())

    other = rgemma.Context(model_q8)
    other.load_state(state)
    assert other.n_past == len(prompt)
    np.testing.assert_array_equal(other.logits(), before)
    other.eval(more, all_logits=True)
    np.testing.assert_array_equal(other.all_logits(), want)

    # A single-sequence state loads into a batch sequence and continues the same way.
    batch = rgemma.BatchContext(model_q8, n_seq_max=3)
    batch.seq_load(2, state)
    assert batch.seq_position(2) == len(prompt)
    batch.decode(more, [2] * len(more), logits=[True] * len(more))
    for i in range(len(more)):
        np.testing.assert_allclose(batch.logits_ith(i), want[i], atol=1e-5, rtol=0)
    back = batch.seq_save(2)
    ctx.load_state(back)
    np.testing.assert_array_equal(ctx.logits(), batch.seq_logits(2))


def test_logits_arrays_are_read_only_views_kept_alive(model_q8):
    ctx = rgemma.Context(model_q8)
    ctx.eval(model_q8.tokenize("Hello"))
    a = ctx.logits()
    b = ctx.logits()
    assert a.dtype == np.float32 and a.shape == (model_q8.n_vocab,)
    assert not a.flags.writeable
    # Asked twice between evals: the same buffer, not a second copy.
    assert np.shares_memory(a, b)
    with pytest.raises(ValueError):
        a[0] = 1.0
    del ctx
    assert np.isfinite(a).all()


def test_batch_decoding_matches_single_sequences(model_q8):
    prompts = [model_q8.tokenize(t) for t in ["The meaning of life is", "Once upon", "A circus foreman was"]]
    singles = []
    for p in prompts:
        ctx = rgemma.Context(model_q8)
        ctx.eval(p)
        singles.append(ctx.logits())
    batch = rgemma.BatchContext(model_q8, n_seq_max=4)
    tokens = [t for p in prompts for t in p]
    seqs = [s for s, p in enumerate(prompts) for _ in p]
    batch.decode(tokens, seqs)
    for s, want in enumerate(singles):
        np.testing.assert_allclose(batch.seq_logits(s), want, atol=1e-5, rtol=0)
    # Fork sequence 0 into 3 and continue both greedily: the same tokens.
    batch.seq_copy(0, 3)
    samplers = {s: rgemma.Sampler(temperature=0) for s in (0, 3)}
    outs = {0: [], 3: []}
    for _ in range(8):
        toks = []
        for s in (0, 3):
            t = batch.sample(samplers[s], s)
            samplers[s].accept(t)
            outs[s].append(t)
            toks.append(t)
        batch.decode(toks, [0, 3])
    assert outs[0] == outs[3]


def test_chat_completion_shapes_and_usage(model_q8):
    messages = [
        {"role": "system", "content": "Answer with a fortune."},
        {"role": "user", "content": "What will happen today?"},
    ]
    out = model_q8.create_chat_completion(messages, max_tokens=16, temperature=0)
    assert out["object"] == "chat.completion"
    choice = out["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] in ("stop", "length")
    usage = out["usage"]
    assert usage["prompt_tokens"] == len(model_q8._chat_prompt([("system", messages[0]["content"]),
                                                                 ("user", messages[1]["content"])]))
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert 0 < usage["completion_tokens"] <= 16

    chunks = list(model_q8.create_chat_completion(messages, max_tokens=16, temperature=0, stream=True))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == choice["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == choice["finish_reason"]
    # Text parts are accepted like a plain string.
    parts = [{"role": "user", "content": [{"type": "text", "text": "What will "}, {"type": "text", "text": "happen today?"}]}]
    plain = [{"role": "user", "content": "What will happen today?"}]
    assert (model_q8.create_chat_completion(parts, max_tokens=8, temperature=0)["choices"][0]["message"]
            == model_q8.create_chat_completion(plain, max_tokens=8, temperature=0)["choices"][0]["message"])
