"""Incremental detokenization of a request's output, and stop strings.

Decoding token by token is wrong for byte-level and SentencePiece vocabularies: one character
can span several tokens (UTF-8 bytes split across tokens decode to U+FFFD until complete), and
a token's leading space depends on what precedes it. So text is produced by decoding a short
window — a few tokens of context plus the new ones — and emitting only what the new tokens
add, holding back while the window ends in an incomplete character (`\\ufffd`).

Stop strings are searched in the accumulated output text. The first match ends the request;
the stop string and everything after it are cut (kept only with `include_stop_str_in_output`),
as OpenAI does. While streaming, the last `len(longest stop) - 1` characters are held back, so
a stop string is never partly emitted. What must stay true: the concatenation of the deltas
returned equals the final text.
"""

from __future__ import annotations

from typing import Any

from modelport.llm.request import SamplingParams

CONTEXT_TOKENS = 5  # prompt tokens kept as decoding context (vLLM's INITIAL_INCREMENTAL_DETOKENIZATION_OFFSET)


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Any, prompt_token_ids: list[int], params: SamplingParams) -> None:
        self.tokenizer = tokenizer
        self.skip_special = params.skip_special_tokens
        self.stop = params.stop
        self.include_stop = params.include_stop_str_in_output
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self._ids = list(prompt_token_ids[-CONTEXT_TOKENS:])
        self._prefix_offset = 0
        self._read_offset = len(self._ids)
        self.text = ""  # the output text so far (cut at a stop string once one matched)
        self._emitted = 0

    def update(self, token_ids: list[int], skip_last: bool = False) -> str | None:
        """Add new output tokens; return the stop string that matched, if one did.

        `skip_last`: the last token ended the request (EOS / a stop token id) and is not text.
        """
        for token in token_ids[: len(token_ids) - 1] if skip_last else token_ids:
            before = len(self.text)
            self._ids.append(token)
            self.text += self._decode_next()
            if self.stop:
                matched = self._find_stop(before)
                if matched is not None:
                    return matched
        return None

    def take(self, finished: bool) -> str:
        """The text not returned yet; while not finished, minus the held-back tail."""
        end = len(self.text) if finished else max(self._emitted, len(self.text) - self.hold)
        if finished and self._read_offset < len(self._ids):
            # Whatever is still pending (an incomplete character at the very end) is flushed as is.
            self.text += self._flush()
            end = len(self.text)
        delta = self.text[self._emitted : end]
        self._emitted = end
        return delta

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special)

    def _decode_next(self) -> str:
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full = self._decode(self._ids[self._prefix_offset :])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
            return full[len(prefix) :]
        return ""

    def _flush(self) -> str:
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full = self._decode(self._ids[self._prefix_offset :])
        self._read_offset = len(self._ids)
        return full[len(prefix) :] if full.startswith(prefix) else ""

    def _find_stop(self, new_from: int) -> str | None:
        start = max(0, new_from - max(len(s) for s in self.stop) + 1)
        best: tuple[int, str] | None = None
        for s in self.stop:
            i = self.text.find(s, start)
            if i >= 0 and (best is None or i < best[0]):
                best = (i, s)
        if best is None:
            return None
        i, s = best
        self.text = self.text[: i + len(s)] if self.include_stop else self.text[:i]
        self._read_offset = len(self._ids)  # nothing is flushed after a stop
        return s
