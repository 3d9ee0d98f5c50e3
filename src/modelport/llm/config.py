"""Configuration of the LLM runtime: the engine knobs (package + environment) and the HF model config.

Where the checkpoint is. A model package (`DIR/model/config.json` with `model_type: "LLM"`)
cannot keep a Hugging Face checkpoint directly in `model/`: both want `model/config.json`. So
the checkpoint lives in a subdirectory of `model/`, named by the package config (default
`weights`):

    DIR/model/config.json            {"model_type": "LLM", "model_algorithm": "llm",
                                      "llm": {"checkpoint": "weights", "block_size": 16, ...}}
    DIR/model/weights/config.json    the HF config, *.safetensors, tokenizer files

`DIR` may also be a bare HF checkpoint directory (its `config.json` has `architectures`), which
is served as is under the directory's name — handy for development and benchmarks.

Engine knobs, each from (lowest to highest precedence) the default, the package's `llm` object,
the environment `MODELPORT_LLM_<NAME>` (the environment an instance is started with wins, as for
package `envs`):

| name | default | meaning |
|---|---|---|
| `checkpoint` | `weights` | checkpoint directory, relative to `model/` (packages only) |
| `served_model_name` | package `model_name` | the `model` clients send |
| `dtype` | `bfloat16` | `bfloat16`, `float32` or `float16` (weights, activations, KV cache) |
| `block_size` | 16 | tokens per KV block (the prefix-cache granularity) |
| `kv_cache_mb` | 512 | KV pool size, allocated and touched at start-up |
| `num_kv_blocks` | from `kv_cache_mb` | KV pool size in blocks (overrides `kv_cache_mb`) |
| `max_model_len` | min(model's max positions, 8192, what the pool holds) | prompt + output tokens |
| `max_num_seqs` | 16 | requests running at once |
| `max_num_batched_tokens` | 512 | tokens per engine step (prefill chunk size) |
| `enable_prefix_caching` | true | reuse the KV of shared prompt prefixes |
| `threads` | CPU count | torch intra-op threads |
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
}
DTYPES = ("bfloat16", "float32", "float16")
ENV_PREFIX = "MODELPORT_LLM_"


class ConfigError(ValueError):
    """The package, checkpoint or environment asks for something we cannot run; says what to fix."""


@dataclass(frozen=True)
class EngineConfig:
    checkpoint: Path
    served_model_name: str
    dtype: str = "bfloat16"
    block_size: int = 16
    kv_cache_mb: int = 512
    num_kv_blocks: int | None = None
    max_model_len: int | None = None
    max_num_seqs: int = 16
    max_num_batched_tokens: int = 512
    enable_prefix_caching: bool = True
    threads: int | None = None

    def with_overrides(self, values: dict[str, Any], source: str) -> EngineConfig:
        """A copy with `values` (strings from the environment, or JSON values) parsed and checked."""
        changes: dict[str, Any] = {}
        for f in fields(self):
            if f.name not in values or f.name == "checkpoint":
                continue
            changes[f.name] = _parse_field(f.name, values[f.name], source)
        unknown = set(values) - {f.name for f in fields(self)}
        if unknown:
            raise ConfigError(f"{source}: unknown setting(s) {', '.join(sorted(unknown))}")
        return replace(self, **changes)


def _parse_field(name: str, value: Any, source: str) -> Any:
    where = f"{source}: {name}"
    if name == "served_model_name":
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where} must be a non-empty string")
        return value
    if name == "dtype":
        if value not in DTYPES:
            raise ConfigError(f"{where} must be one of {', '.join(DTYPES)}, got {value!r}")
        return value
    if name == "enable_prefix_caching":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "0", "false", "no"):
            return value.lower() in ("1", "true", "yes")
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    try:
        if isinstance(value, bool):
            raise ValueError
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where} must be a whole number, got {value!r}") from None
    if number < 1:
        raise ConfigError(f"{where} must be >= 1, got {number}")
    return number


def _env_values() -> dict[str, str]:
    names = {f.name for f in fields(EngineConfig)} - {"checkpoint"}
    return {name: os.environ[ENV_PREFIX + name.upper()] for name in names if os.environ.get(ENV_PREFIX + name.upper())}


def resolve_engine_config(target: Path) -> EngineConfig:
    """The engine configuration for a package directory or a bare HF checkpoint directory."""
    target = Path(target).resolve()
    package_config = target / "model" / "config.json"
    if package_config.is_file():
        from modelport.errors import PlatformError
        from modelport.packages import load_package

        try:
            package = load_package(target)
        except PlatformError as exc:
            raise ConfigError(f"{exc.code}: {exc.message}") from exc
        if package.runtime_kind != "llm":
            raise ConfigError(f"{target}: model_type {package.model_type} is not an LLM package")
        llm = package.config.get("llm", {})
        if not isinstance(llm, dict):
            raise ConfigError("model/config.json: field 'llm' must be an object like {\"block_size\": 16}")
        checkpoint_name = llm.get("checkpoint", "weights")
        if not isinstance(checkpoint_name, str) or not checkpoint_name:
            raise ConfigError("model/config.json: llm.checkpoint must be a directory name under model/")
        checkpoint = (package.model_dir / checkpoint_name).resolve()
        config = EngineConfig(checkpoint=checkpoint, served_model_name=package.model_name)
        config = config.with_overrides({k: v for k, v in llm.items() if k != "checkpoint"}, "llm")
    elif (target / "config.json").is_file():
        config = EngineConfig(checkpoint=target, served_model_name=target.name)
    else:
        raise ConfigError(f"{target}: neither a model package (model/config.json) nor a checkpoint (config.json)")
    if not (config.checkpoint / "config.json").is_file():
        raise ConfigError(
            f"{config.checkpoint}: no Hugging Face checkpoint here (config.json missing); an LLM package "
            "keeps it in model/<llm.checkpoint> (default model/weights)"
        )
    return config.with_overrides(_env_values(), "environment")


@dataclass(frozen=True)
class ModelConfig:
    """The parts of a Hugging Face `config.json` a Llama-family forward pass needs."""

    architecture: str  # "llama" | "mistral" | "qwen2"
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict[str, Any] | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    eos_token_ids: tuple[int, ...]
    sliding_window: int | None

    @classmethod
    def from_checkpoint(cls, checkpoint: Path) -> ModelConfig:
        raw = json.loads((checkpoint / "config.json").read_text())
        archs = raw.get("architectures") or []
        arch = next((SUPPORTED_ARCHITECTURES[a] for a in archs if a in SUPPORTED_ARCHITECTURES), None)
        if not archs and raw.get("model_type") in SUPPORTED_ARCHITECTURES.values():
            arch = raw["model_type"]
        if arch is None:
            raise ConfigError(
                f"{checkpoint}/config.json: architecture {archs or raw.get('model_type')!r} is not "
                f"supported; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        num_heads = raw["num_attention_heads"]
        rope = raw.get("rope_parameters") or {}
        rope_scaling = raw.get("rope_scaling") or None
        if rope.get("rope_type", "default") != "default":
            rope_scaling = rope
        if rope_scaling is not None:
            kind = rope_scaling.get("rope_type", rope_scaling.get("type", "default"))
            if kind not in ("default", "linear", "llama3"):
                raise ConfigError(f"{checkpoint}/config.json: rope type {kind!r} is not supported")
            if kind == "default":
                rope_scaling = None
        if rope.get("partial_rotary_factor", raw.get("partial_rotary_factor", 1.0)) != 1.0:
            raise ConfigError(f"{checkpoint}/config.json: partial rotary embeddings are not supported")
        eos = raw.get("eos_token_id")
        gen_path = checkpoint / "generation_config.json"
        if gen_path.is_file():
            eos = json.loads(gen_path.read_text()).get("eos_token_id", eos)
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,))
        sliding = raw.get("sliding_window")
        if arch == "qwen2" and not raw.get("use_sliding_window", False):
            sliding = None
        return cls(
            architecture=arch,
            vocab_size=raw["vocab_size"],
            hidden_size=raw["hidden_size"],
            num_layers=raw["num_hidden_layers"],
            num_heads=num_heads,
            num_kv_heads=raw.get("num_key_value_heads") or num_heads,
            head_dim=raw.get("head_dim") or raw["hidden_size"] // num_heads,
            intermediate_size=raw["intermediate_size"],
            rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
            rope_theta=rope.get("rope_theta", raw.get("rope_theta", 10000.0)),
            rope_scaling=rope_scaling,
            max_position_embeddings=raw.get("max_position_embeddings", 4096),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            eos_token_ids=tuple(int(e) for e in eos_ids),
            sliding_window=sliding,
        )

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * dtype_bytes
