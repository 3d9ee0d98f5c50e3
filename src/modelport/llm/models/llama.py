"""The Llama-family decoder (Llama, Mistral, Qwen2) in plain PyTorch, over a paged KV cache.

RMSNorm, rotary embeddings (rope_theta; linear and llama3 scaling), grouped-query attention and
a SwiGLU MLP, with the numerics of the Hugging Face implementation (norms in float32, rotary
tables computed in float32 then cast). Qwen2 differs only by biases on q/k/v, which are loaded
whenever the checkpoint has them.

The forward pass works on a flattened batch: the tokens of every scheduled request are
concatenated (`input_ids[T]`, `positions[T]`). Attention first writes the batch's keys/values
into their cache slots (so a request can read blocks another request of the same step writes),
then attends: single-token requests (decodes) in one padded, masked SDPA call; prefill chunks
one SDPA call each — over their own keys (causal) when they start at position 0, else over the
keys gathered from their blocks with a causal mask offset by the chunk's start.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from modelport.llm.config import ConfigError, ModelConfig

log = logging.getLogger("modelport.llm")


@dataclass
class PrefillSegment:
    """Tokens `[q_start, q_start + q_len)` of the batch: a chunk at positions `[ctx_len - q_len, ctx_len)`."""

    q_start: int
    q_len: int
    ctx_len: int
    block_ids: torch.Tensor  # the request's blocks covering ctx_len tokens
    mask: torch.Tensor | None  # additive [q_len, ctx_len] when the chunk has a cached/earlier prefix


@dataclass
class AttentionMetadata:
    """Where the batch's tokens go in the KV cache and what each one attends to (built once per step)."""

    slot_mapping: torch.Tensor  # [T] flat slot (block_id * block_size + offset) of each token
    num_decodes: int  # the first `num_decodes` tokens are single-token requests
    decode_block_tables: torch.Tensor | None  # [num_decodes, max_blocks], padded with block 0
    decode_mask: torch.Tensor | None  # additive [num_decodes, 1, 1, max_blocks * block_size]
    prefills: list[PrefillSegment]


@dataclass
class LayerWeights:
    input_norm: torch.Tensor
    qkv: torch.Tensor
    qkv_bias: torch.Tensor | None
    o: torch.Tensor
    post_norm: torch.Tensor
    gate_up: torch.Tensor
    down: torch.Tensor


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    """Inverse frequencies of the rotary embedding, scaled like transformers' rope types."""
    dim = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    scaling = cfg.rope_scaling
    if scaling is None:
        return inv_freq
    kind = scaling.get("rope_type", scaling.get("type"))
    factor = float(scaling["factor"])
    if kind == "linear":
        return inv_freq / factor
    # llama3: keep high frequencies, divide low ones by `factor`, interpolate in between.
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    old_len = float(scaling["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old_len / high) * ~(wavelen > old_len / low)
    return torch.where(medium, smoothed, scaled)


class LlamaForCausalLM:
    """Weights and forward pass; stateless apart from the weights (the KV cache is passed in)."""

    def __init__(
        self,
        cfg: ModelConfig,
        weights: dict[str, torch.Tensor],
        dtype: torch.dtype,
        max_positions: int,
    ) -> None:
        self.cfg = cfg
        self.dtype = dtype
        self.embed = weights["model.embed_tokens.weight"]
        self.norm = weights["model.norm.weight"]
        self.lm_head = weights.get("lm_head.weight", self.embed)
        self.layers = [_layer_weights(weights, i) for i in range(cfg.num_layers)]
        self.q_size = cfg.num_heads * cfg.head_dim
        self.kv_size = cfg.num_kv_heads * cfg.head_dim
        freqs = torch.outer(torch.arange(max_positions, dtype=torch.float32), rope_inv_freq(cfg))
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos = emb.cos().to(dtype)
        self.sin = emb.sin().to(dtype)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        meta: AttentionMetadata,
        kv_cache: torch.Tensor,
    ) -> torch.Tensor:
        """Hidden states [T, hidden] after the final norm; writes the batch's KV into `kv_cache`."""
        cfg = self.cfg
        hidden = F.embedding(input_ids, self.embed)
        cos = self.cos[positions].unsqueeze(1)
        sin = self.sin[positions].unsqueeze(1)
        for i, layer in enumerate(self.layers):
            x = _rms_norm(hidden, layer.input_norm, cfg.rms_norm_eps)
            qkv = F.linear(x, layer.qkv, layer.qkv_bias)
            q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
            q = _rope(q.view(-1, cfg.num_heads, cfg.head_dim), cos, sin)
            k = _rope(k.view(-1, cfg.num_kv_heads, cfg.head_dim), cos, sin)
            v = v.view(-1, cfg.num_kv_heads, cfg.head_dim)
            attn = self._attention(q, k, v, kv_cache[i, 0], kv_cache[i, 1], meta)
            hidden = hidden + F.linear(attn, layer.o)
            x = _rms_norm(hidden, layer.post_norm, cfg.rms_norm_eps)
            gate, up = F.linear(x, layer.gate_up).chunk(2, dim=-1)
            hidden = hidden + F.linear(F.silu(gate) * up, layer.down)
        return _rms_norm(hidden, self.norm, cfg.rms_norm_eps)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.lm_head).float()

    def _attention(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        _num_blocks, _block_size, num_kv_heads, head_dim = k_cache.shape
        k_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, meta.slot_mapping, k)
        v_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, meta.slot_mapping, v)
        out = torch.empty_like(q)
        nd = meta.num_decodes
        if nd:
            assert meta.decode_block_tables is not None
            # index_select on the block dimension: several times faster than advanced indexing
            flat = meta.decode_block_tables.view(-1)
            keys = k_cache.index_select(0, flat).view(nd, -1, num_kv_heads, head_dim).transpose(1, 2)
            values = v_cache.index_select(0, flat).view(nd, -1, num_kv_heads, head_dim).transpose(1, 2)
            out[:nd] = F.scaled_dot_product_attention(
                q[:nd].unsqueeze(2), keys, values, attn_mask=meta.decode_mask, enable_gqa=True
            ).squeeze(2)
        for seg in meta.prefills:
            qs = q[seg.q_start : seg.q_start + seg.q_len].transpose(0, 1).unsqueeze(0)
            if seg.mask is None:  # the chunk is the whole sequence so far: its own keys suffice
                ks = k[seg.q_start : seg.q_start + seg.q_len].transpose(0, 1).unsqueeze(0)
                vs = v[seg.q_start : seg.q_start + seg.q_len].transpose(0, 1).unsqueeze(0)
                o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, enable_gqa=True)
            else:
                ks = k_cache.index_select(0, seg.block_ids).view(-1, num_kv_heads, head_dim)[: seg.ctx_len]
                vs = v_cache.index_select(0, seg.block_ids).view(-1, num_kv_heads, head_dim)[: seg.ctx_len]
                o = F.scaled_dot_product_attention(
                    qs,
                    ks.transpose(0, 1).unsqueeze(0),
                    vs.transpose(0, 1).unsqueeze(0),
                    attn_mask=seg.mask,
                    enable_gqa=True,
                )
            out[seg.q_start : seg.q_start + seg.q_len] = o.squeeze(0).transpose(0, 1)
        return out.view(q.shape[0], -1)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def _layer_weights(w: dict[str, torch.Tensor], i: int) -> LayerWeights:
    p = f"model.layers.{i}."
    biases = [w.get(f"{p}self_attn.{n}_proj.bias") for n in "qkv"]
    return LayerWeights(
        input_norm=w[p + "input_layernorm.weight"],
        qkv=torch.cat([w[f"{p}self_attn.{n}_proj.weight"] for n in "qkv"]),
        qkv_bias=torch.cat(biases) if all(b is not None for b in biases) else None,  # type: ignore[misc]
        o=w[p + "self_attn.o_proj.weight"],
        post_norm=w[p + "post_attention_layernorm.weight"],
        gate_up=torch.cat([w[p + "mlp.gate_proj.weight"], w[p + "mlp.up_proj.weight"]]),
        down=w[p + "mlp.down_proj.weight"],
    )


def _expected_names(cfg: ModelConfig) -> set[str]:
    names = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        names |= {p + "input_layernorm.weight", p + "post_attention_layernorm.weight"}
        names |= {f"{p}self_attn.{n}_proj.weight" for n in "qkvo"}
        names |= {f"{p}self_attn.{n}_proj.bias" for n in "qkv"}
        names |= {f"{p}mlp.{n}_proj.weight" for n in ("gate", "up", "down")}
    return names


def checkpoint_files(checkpoint: Path) -> list[Path]:
    """The safetensors files of a checkpoint (single file, or the shards its index names)."""
    index = checkpoint / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [checkpoint / n for n in names]
    files = sorted(checkpoint.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"{checkpoint}: no *.safetensors weights (only safetensors checkpoints are loaded)")
    return files


def load_model(cfg: ModelConfig, checkpoint: Path, dtype: torch.dtype, max_positions: int) -> LlamaForCausalLM:
    """Read the checkpoint's safetensors into our layout (q/k/v and gate/up fused) in `dtype`."""
    from safetensors import safe_open

    weights: dict[str, torch.Tensor] = {}
    for path in checkpoint_files(checkpoint):
        with safe_open(str(path), framework="pt") as fh:
            for name in fh.keys():  # noqa: SIM118 - safe_open is not a mapping
                if name.endswith("rotary_emb.inv_freq"):
                    continue
                weights[name] = fh.get_tensor(name).to(dtype)
    if not cfg.tie_word_embeddings and "lm_head.weight" not in weights:
        log.warning("lm_head.weight missing from %s; tying it to the embeddings", checkpoint)
    if cfg.tie_word_embeddings:
        weights.pop("lm_head.weight", None)
    try:
        model = LlamaForCausalLM(cfg, weights, dtype, max_positions)
    except KeyError as exc:
        raise ConfigError(f"{checkpoint}: weight {exc.args[0]} is missing from the checkpoint") from None
    unexpected = set(weights) - _expected_names(cfg)
    if unexpected:
        raise ConfigError(
            f"{checkpoint}: unsupported weights {sorted(unexpected)[:3]} (not a plain Llama-family model)"
        )
    return model
