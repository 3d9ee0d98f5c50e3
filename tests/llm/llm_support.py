"""Helpers shared by the LLM runtime tests."""

from __future__ import annotations

from typing import Any


def run_to_completion(engine: Any) -> dict[str, list[Any]]:
    """Step until idle; every request's outputs in order."""
    outputs: dict[str, list[Any]] = {}
    while engine.has_unfinished:
        for out in engine.step():
            outputs.setdefault(out.request_id, []).append(out)
    return outputs


def tokens_of(outputs: list[Any]) -> list[int]:
    return [t for o in outputs for t in o.new_token_ids]
