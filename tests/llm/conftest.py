"""Fixtures for LLM runtime tests: tiny random checkpoints (built once per session) and engines on them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from modelport.llm.config import EngineConfig
from modelport.llm.testing import build_checkpoint

# One intra-op thread: tests run next to other processes on a 2-core machine, where spinning
# OpenMP threads make every step slower, not faster.
THREADS = 1


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Random tiny checkpoints with a trained byte-level BPE tokenizer and a chat template."""
    root = tmp_path_factory.mktemp("llm-checkpoints")
    llama3_rope = {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    }
    return {
        "llama": build_checkpoint(root / "llama"),
        "qwen2": build_checkpoint(root / "qwen2", "qwen2", seed=1),
        "mistral": build_checkpoint(root / "mistral", "mistral", seed=2, tie_word_embeddings=True),
        "llama3": build_checkpoint(root / "llama3", seed=3, rope_parameters=llama3_rope),
    }


@pytest.fixture(scope="session")
def tokenizer(checkpoints: dict[str, Path]) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(checkpoints["llama"]))


@pytest.fixture(scope="session")
def make_engine(checkpoints: dict[str, Path], tokenizer: Any) -> Callable[..., Any]:
    """Engine factory: `make_engine(arch="llama", **EngineConfig fields)`; float32 unless told."""
    from modelport.llm.engine import LLMEngine

    def make(arch: str = "llama", **overrides: Any) -> LLMEngine:
        config = EngineConfig(checkpoint=checkpoints[arch], served_model_name=arch, dtype="float32")
        defaults = {"num_kv_blocks": 256, "max_num_batched_tokens": 256, "threads": THREADS}
        return LLMEngine(replace(config, **{**defaults, **overrides}), tokenizer=tokenizer)

    return make


@pytest.fixture(scope="session")
def hf_greedy(checkpoints: dict[str, Path]) -> Callable[..., list[int]]:
    """transformers' own greedy `generate` on a checkpoint: the reference output."""
    import torch
    import transformers

    models: dict[tuple[str, str], Any] = {}

    def generate(arch: str, prompt: list[int], max_new_tokens: int, dtype: str = "float32") -> list[int]:
        key = (arch, dtype)
        if key not in models:
            models[key] = transformers.AutoModelForCausalLM.from_pretrained(
                str(checkpoints[arch]), dtype=getattr(torch, dtype)
            )
        out = models[key].generate(
            torch.tensor([prompt]), max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=None
        )
        return out[0, len(prompt) :].tolist()

    return generate
