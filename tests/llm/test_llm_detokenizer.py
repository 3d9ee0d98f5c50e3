"""Incremental detokenizer: multi-byte characters, leading spaces, stop strings."""

from __future__ import annotations

from typing import Any

from modelport.llm.detokenizer import IncrementalDetokenizer
from modelport.llm.request import SamplingParams

TEXT = "hello café naïve 你好 世界 🙂🚀 über the model"


def stream(tokenizer: Any, text: str, **params: Any) -> tuple[list[str], str | None, IncrementalDetokenizer]:
    ids = tokenizer.encode(text, add_special_tokens=False)
    prompt = tokenizer.encode("the prompt", add_special_tokens=False)
    d = IncrementalDetokenizer(tokenizer, prompt, SamplingParams(**params))
    deltas, matched = [], None
    for i, token in enumerate(ids):
        matched = d.update([token])
        last = matched is not None or i == len(ids) - 1
        deltas.append(d.take(finished=last))
        if matched is not None:
            break
    return deltas, matched, d


def test_deltas_rebuild_the_text_and_never_split_a_character(tokenizer: Any) -> None:
    ids = tokenizer.encode(TEXT, add_special_tokens=False)
    assert len(ids) > len(TEXT.split())  # multi-byte characters take several tokens
    deltas, matched, _ = stream(tokenizer, TEXT)
    assert matched is None
    assert "".join(deltas) == tokenizer.decode(ids) == TEXT
    assert not any("\ufffd" in d for d in deltas)
    assert "" in deltas  # some tokens were only part of a character


def test_stop_string_is_cut_and_never_partly_streamed(tokenizer: Any) -> None:
    deltas, matched, d = stream(tokenizer, TEXT, stop=("世界", "nothing"))
    assert matched == "世界"
    assert "".join(deltas) == d.text == "hello café naïve 你好 "
    assert all("世" not in x for x in deltas)


def test_include_stop_str_in_output(tokenizer: Any) -> None:
    deltas, matched, _ = stream(tokenizer, TEXT, stop=("naïve",), include_stop_str_in_output=True)
    assert matched == "naïve" and "".join(deltas) == "hello café naïve"


def test_stop_token_is_not_text(tokenizer: Any) -> None:
    d = IncrementalDetokenizer(tokenizer, [], SamplingParams(skip_special_tokens=False))
    ids = [*tokenizer.encode("hello world", add_special_tokens=False), tokenizer.eos_token_id]
    d.update(ids, skip_last=True)
    assert d.take(finished=True) == "hello world"
