"""rgemma: RecurrentGemma (Griffin) inference on the CPU, from Python.

    import rgemma
    model = rgemma.Model("models/tiny-fortunes-q8_0.gguf")
    print(model.generate("The best way to", max_tokens=32, seed=1))
    for piece in model.stream("Once upon a time", max_tokens=32):
        print(piece, end="", flush=True)

`Model` loads a GGUF file; `generate`, `stream` and `create_chat_completion` run one
sequence each on a context the model keeps; `Context` (one sequence) and `BatchContext`
(many sequences decoded together, with fork / save / load) give direct control. Every call
that runs the model releases the GIL; Ctrl-C stops a generation with KeyboardInterrupt.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np

from . import _rgemma
from ._rgemma import Sampler, Stream, Tokenizer, __version__

__all__ = ["Model", "Context", "BatchContext", "Sampler", "Tokenizer", "Stream", "__version__"]

Prompt = Union[str, Sequence[int]]
Stop = Union[str, Sequence[str], None]


def _stop_list(stop: Stop) -> List[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    stops = list(stop)
    for i, s in enumerate(stops):
        if not isinstance(s, str):
            raise TypeError(f"stop[{i}] must be a string, got {type(s).__name__}")
    return stops


def _sampler(temperature, top_k, top_p, min_p, repeat_penalty, presence_penalty,
             frequency_penalty, seed) -> Sampler:
    """The sampler of one generate / stream / chat call (the penalties look back 64 tokens,
    llama.cpp's default)."""
    return Sampler(temperature, top_k, top_p, min_p, repeat_penalty, 64,
                   presence_penalty, frequency_penalty, seed)


class Model(_rgemma.Model):
    """A RecurrentGemma model loaded from a GGUF file.

    Model(path, n_threads=None): `n_threads` is the number of threads of the contexts made
    for it (None = every core). A missing file raises FileNotFoundError, a bad one ValueError.
    """

    def _prompt_ids(self, prompt: Prompt) -> List[int]:
        if isinstance(prompt, str):
            # Like llama.cpp's prompts: BOS first, control pieces written in the text count.
            return self.tokenize(prompt, add_bos=True, special=True)
        if isinstance(prompt, (bytes, bytearray)):
            raise TypeError("prompt must be a str or a sequence of token ids, not bytes")
        return list(prompt)

    def generate(
        self,
        prompt: Prompt,
        max_tokens: Optional[int] = 256,
        temperature: float = 0.8,
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        repeat_penalty: float = 1.0,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        seed: Optional[int] = None,
        stop: Stop = None,
    ) -> str:
        """Generates a continuation of `prompt` (text, or token ids) and returns its text.

        Ends at the end-of-sequence or end-of-turn token, after `max_tokens` tokens (None: no
        limit), or before the first of the `stop` strings. `temperature=0` is greedy. The same
        `seed` and arguments give the same text.
        """
        sampler = _sampler(temperature, top_k, top_p, min_p, repeat_penalty,
                           presence_penalty, frequency_penalty, seed)
        text, _, _, _ = self._complete(self._prompt_ids(prompt), sampler, max_tokens, _stop_list(stop))
        return text

    def stream(
        self,
        prompt: Prompt,
        max_tokens: Optional[int] = 256,
        temperature: float = 0.8,
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        repeat_penalty: float = 1.0,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        seed: Optional[int] = None,
        stop: Stop = None,
    ) -> Stream:
        """Like `generate`, but yields the text in pieces as it is decoded; the pieces join to
        the text `generate` returns. After the last piece the iterator's `finish_reason`,
        `prompt_tokens` and `tokens` tell how it ended."""
        sampler = _sampler(temperature, top_k, top_p, min_p, repeat_penalty,
                           presence_penalty, frequency_penalty, seed)
        return self._stream(self._prompt_ids(prompt), sampler, max_tokens, _stop_list(stop))

    def create_chat_completion(
        self,
        messages: Sequence[Dict[str, Any]],
        max_tokens: Optional[int] = None,
        temperature: float = 0.8,
        top_p: float = 0.95,
        top_k: int = 40,
        min_p: float = 0.05,
        repeat_penalty: float = 1.0,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        seed: Optional[int] = None,
        stop: Stop = None,
        stream: bool = False,
        max_completion_tokens: Optional[int] = None,
        model: Optional[str] = None,
    ) -> Union[Dict[str, Any], Iterator[Dict[str, Any]]]:
        """Answers a chat in OpenAI's shapes (as llama-cpp-python does).

        `messages`: dicts with `role` (system, developer, user, assistant) and `content` (a
        string, or a list of `{"type": "text", "text": ...}` parts), rendered with the Gemma
        turn template (system messages folded into the next user turn). Returns a
        `chat.completion` dict, or with `stream=True` an iterator of `chat.completion.chunk`
        dicts. `max_tokens` None = until the end of the turn.
        """
        pairs = _chat_pairs(messages)
        if max_completion_tokens is not None:
            max_tokens = max_completion_tokens
        prompt = self._chat_prompt(pairs)
        sampler = _sampler(temperature, top_k, top_p, min_p, repeat_penalty,
                           presence_penalty, frequency_penalty, seed)
        ident = "chatcmpl-" + uuid.uuid4().hex
        created = int(time.time())
        name = model if model is not None else str(self.path)
        if stream:
            pieces = self._stream(prompt, sampler, max_tokens, _stop_list(stop))
            return _chat_chunks(pieces, ident, created, name)
        text, ids, finish, n_prompt = self._complete(prompt, sampler, max_tokens, _stop_list(stop))
        return {
            "id": ident,
            "object": "chat.completion",
            "created": created,
            "model": name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": finish,
                }
            ],
            "usage": {
                "prompt_tokens": n_prompt,
                "completion_tokens": len(ids),
                "total_tokens": n_prompt + len(ids),
            },
        }

    def context(self, batch_size: int = 512, n_threads: Optional[int] = None,
                kv_type: str = "f32") -> "Context":
        """A new `Context` (one sequence) of this model."""
        return Context(self, batch_size=batch_size, n_threads=n_threads, kv_type=kv_type)


def _chat_pairs(messages: Sequence[Dict[str, Any]]) -> List[tuple]:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise TypeError("messages must be a list of {'role': ..., 'content': ...} dicts")
    pairs = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise TypeError(f"messages[{i}] must be a dict, got {type(m).__name__}")
        role = m.get("role")
        if not isinstance(role, str):
            raise ValueError(f"messages[{i}].role must be a string")
        content = m.get("content")
        if isinstance(content, list):
            texts = []
            for j, part in enumerate(content):
                if not (isinstance(part, dict) and part.get("type") == "text"
                        and isinstance(part.get("text"), str)):
                    raise ValueError(f"messages[{i}].content[{j}]: only text parts are supported")
                texts.append(part["text"])
            content = "".join(texts)
        if not isinstance(content, str):
            raise ValueError(f"messages[{i}].content must be a string or a list of text parts")
        pairs.append((role, content))
    return pairs


def _chat_chunks(pieces: Stream, ident: str, created: int, name: str) -> Iterator[Dict[str, Any]]:
    def chunk(delta: Dict[str, Any], finish: Optional[str]) -> Dict[str, Any]:
        return {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": name,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }

    yield chunk({"role": "assistant"}, None)
    for piece in pieces:
        yield chunk({"content": piece}, None)
    yield chunk({}, pieces.finish_reason)


class Context(_rgemma.Context):
    """One decoding sequence of a model.

    Context(model, batch_size=512, n_threads=None, kv_type="f32"): `eval(ids)` runs token ids
    at the next positions, `logits()` is the last position's logits as a read-only float32
    numpy array (it keeps its values after later evals), `save_state()` / `load_state(bytes)`
    move the whole state (a few tens of MB at most, whatever the length).
    """

    def logits(self) -> np.ndarray:
        """Logits after the last evaluated token, shape (n_vocab,)."""
        return np.asarray(self._logits())

    def all_logits(self) -> np.ndarray:
        """Every row of the last `eval(ids, all_logits=True)`, shape (len(ids), n_vocab)."""
        return np.asarray(self._all_logits())

    def sample(self, sampler: Sampler) -> int:
        """The next token drawn by `sampler` from `logits()` (call `sampler.accept` on it)."""
        return self._sample(sampler)


class BatchContext(_rgemma.BatchContext):
    """Up to `n_seq_max` sequences decoded together: every `decode` reads the weights once for
    all its rows, which is how many sequences cost little more than one.

    BatchContext(model, n_seq_max, batch_size=512, n_threads=None, kv_type="f32").
    `decode(tokens, seq_ids, logits=None)`: row i appends tokens[i] to sequence seq_ids[i];
    by default each sequence's last row in the batch gets logits. `seq_copy(0, k)` forks
    sequence 0 into k after one prefill.
    """

    def logits_ith(self, i: int) -> np.ndarray:
        """Logits after row `i` of the last decode."""
        return np.asarray(self._logits_ith(i))

    def seq_logits(self, seq: int) -> np.ndarray:
        """Logits after the last token of sequence `seq`."""
        return np.asarray(self._seq_logits(seq))

    def sample(self, sampler: Sampler, seq: int) -> int:
        """The next token of sequence `seq` drawn by `sampler` (call `sampler.accept` on it)."""
        return self._sample(sampler, seq)
