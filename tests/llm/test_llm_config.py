"""Where the checkpoint is and how the engine is configured: package, bare checkpoint, environment."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from modelport.llm.config import ConfigError, ModelConfig, resolve_engine_config

HF_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 100,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "max_position_embeddings": 2048,
    "rope_theta": 10000.0,
    "eos_token_id": 2,
}


def write_package(root: Path, llm: object = None, checkpoint: str = "weights", hf: dict | None = None) -> Path:
    (root / "model" / checkpoint).mkdir(parents=True)
    config: dict = {"model_type": "LLM", "model_algorithm": "chat", "model_name": "my-llm"}
    if llm is not None:
        config["llm"] = llm
    (root / "model" / "config.json").write_text(json.dumps(config))
    (root / "model" / checkpoint / "config.json").write_text(json.dumps(hf or HF_CONFIG))
    return root


def test_package_with_defaults(tmp_path: Path) -> None:
    cfg = resolve_engine_config(write_package(tmp_path))
    assert cfg.checkpoint == (tmp_path / "model" / "weights").resolve()
    assert cfg.served_model_name == "my-llm" and cfg.dtype == "bfloat16" and cfg.block_size == 16


def test_package_settings_and_environment_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = write_package(tmp_path, {"checkpoint": "hf", "block_size": 32, "max_num_seqs": "4"}, checkpoint="hf")
    monkeypatch.setenv("MODELPORT_LLM_BLOCK_SIZE", "8")
    monkeypatch.setenv("MODELPORT_LLM_ENABLE_PREFIX_CACHING", "false")
    cfg = resolve_engine_config(root)
    assert cfg.checkpoint.name == "hf" and cfg.max_num_seqs == 4
    assert cfg.block_size == 8 and cfg.enable_prefix_caching is False


@pytest.mark.parametrize(
    ("llm", "message"),
    [
        ({"block_size": 0}, "block_size must be >= 1"),
        ({"dtype": "int4"}, "dtype must be one of"),
        ({"blocksize": 16}, "unknown setting"),
        ([1], "must be an object"),
    ],
)
def test_bad_settings_are_refused(tmp_path: Path, llm: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_engine_config(write_package(tmp_path, llm))


def test_missing_checkpoint_says_where_it_belongs(tmp_path: Path) -> None:
    root = write_package(tmp_path, {"checkpoint": "elsewhere"})
    with pytest.raises(ConfigError, match=r"model/<llm.checkpoint>"):
        resolve_engine_config(root)


def test_bare_checkpoint_directory(tmp_path: Path) -> None:
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(HF_CONFIG))
    cfg = resolve_engine_config(tmp_path / "ckpt")
    assert cfg.checkpoint == (tmp_path / "ckpt").resolve() and cfg.served_model_name == "ckpt"


def test_model_config_variants(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(
        json.dumps({**HF_CONFIG, "rope_scaling": {"type": "linear", "factor": 2.0}, "head_dim": 32})
    )
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 7]}))
    mc = ModelConfig.from_checkpoint(tmp_path)
    assert mc.head_dim == 32 and mc.rope_scaling == {"type": "linear", "factor": 2.0}
    assert mc.eos_token_ids == (2, 7) and mc.architecture == "llama"
    (tmp_path / "config.json").write_text(json.dumps({**HF_CONFIG, "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ConfigError, match="not supported"):
        ModelConfig.from_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**HF_CONFIG, "rope_scaling": {"rope_type": "yarn", "factor": 4}}))
    with pytest.raises(ConfigError, match="yarn"):
        ModelConfig.from_checkpoint(tmp_path)


def test_bad_target_exits_2(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "modelport.llm", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "neither a model package" in out.stderr
