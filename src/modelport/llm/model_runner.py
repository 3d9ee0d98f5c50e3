"""The model runner: owns the weights and the paged KV cache tensor, and runs one scheduled step.

The KV cache is one tensor `[num_layers, 2 (k, v), num_blocks, block_size, num_kv_heads,
head_dim]`, allocated and written once at start-up (first touch of fresh memory is slow on
these VMs, and a lazily faulted-in cache would make the first long prompts slow). Block `b` of
the pool is row `b` of every layer's K and V. The runner never decides which blocks a request
uses: it reads the block tables the KV cache manager keeps.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from modelport.llm.config import ModelConfig
from modelport.llm.kv_cache_manager import KVCacheManager, cdiv
from modelport.llm.models.llama import AttentionMetadata, PrefillSegment, load_model
from modelport.llm.scheduler import ScheduledRequest, SchedulerOutput

log = logging.getLogger("modelport.llm")

TORCH_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}


def set_threads(threads: int | None) -> int:
    """Use one intra-op thread per core (the engine thread is the only heavy user)."""
    n = threads or len(os.sched_getaffinity(0)) or 1
    torch.set_num_threads(n)
    return n


@dataclass
class StepResult:
    """The logits of the requests that sample in this step, in `sampling` order."""

    logits: torch.Tensor  # [len(sampling), vocab] float32
    sampling: list[ScheduledRequest]


class ModelRunner:
    def __init__(
        self,
        cfg: ModelConfig,
        checkpoint: Path,
        dtype: str,
        num_blocks: int,
        block_size: int,
        max_model_len: int,
    ) -> None:
        self.cfg = cfg
        self.dtype = TORCH_DTYPES[dtype]
        self.block_size = block_size
        self.num_blocks = num_blocks
        started = time.monotonic()
        self.model = load_model(cfg, checkpoint, self.dtype, max_model_len)
        log.info("weights loaded in %.2f s", time.monotonic() - started)
        started = time.monotonic()
        shape = (cfg.num_layers, 2, num_blocks, block_size, cfg.num_kv_heads, cfg.head_dim)
        self.kv_cache = torch.empty(shape, dtype=self.dtype)
        self.kv_cache.zero_()  # touch every page now, not during the first requests
        log.info(
            "KV cache: %d blocks x %d tokens, %.0f MiB, touched in %.2f s",
            num_blocks,
            block_size,
            self.kv_cache.numel() * self.kv_cache.element_size() / 2**20,
            time.monotonic() - started,
        )

    @torch.inference_mode()
    def execute(self, out: SchedulerOutput, kv: KVCacheManager) -> StepResult:
        """Run the forward pass for `out.scheduled` (decodes first) and return the sampling rows' logits."""
        input_ids, positions, meta = self._prepare(out.scheduled, kv)
        hidden = self.model.forward(input_ids, positions, meta, self.kv_cache)
        sampling, rows, offset = [], [], 0
        for s in out.scheduled:
            offset += s.num_tokens
            if s.samples:
                sampling.append(s)
                rows.append(offset - 1)
        logits = self.model.compute_logits(hidden[rows]) if rows else hidden.new_empty((0, 0)).float()
        return StepResult(logits, sampling)

    def _prepare(
        self, scheduled: list[ScheduledRequest], kv: KVCacheManager
    ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
        bs = self.block_size
        ids: list[int] = []
        pos_parts: list[torch.Tensor] = []
        slot_parts: list[torch.Tensor] = []
        decode_tables: list[list[int]] = []
        decode_lens: list[int] = []
        prefills: list[PrefillSegment] = []
        for s in scheduled:
            req = s.request
            end = s.start + s.num_tokens
            table = kv.block_ids(req.request_id)
            ids.extend(req.all_token_ids[s.start : end])
            if s.num_tokens == 1:
                decode_tables.append(table[: cdiv(end, bs)])
                decode_lens.append(end)
                pos_parts.append(torch.tensor([s.start]))
                slot_parts.append(torch.tensor([table[s.start // bs] * bs + s.start % bs]))
                continue
            blocks = torch.tensor(table[: cdiv(end, bs)], dtype=torch.long)
            pos = torch.arange(s.start, end)
            pos_parts.append(pos)
            slot_parts.append(blocks[pos // bs] * bs + pos % bs)
            mask = None
            if s.start > 0:
                allowed = torch.arange(end)[None, :] <= pos[:, None]
                mask = torch.zeros(allowed.shape, dtype=self.dtype).masked_fill_(~allowed, float("-inf"))
            q_start = len(ids) - s.num_tokens
            prefills.append(PrefillSegment(q_start, s.num_tokens, end, blocks, mask))
        decode_bt = decode_mask = None
        if decode_tables:
            width = max(len(t) for t in decode_tables)
            decode_bt = torch.tensor([t + [0] * (width - len(t)) for t in decode_tables], dtype=torch.long)
            lens = torch.tensor(decode_lens)
            allowed = torch.arange(width * bs)[None, :] < lens[:, None]
            decode_mask = torch.zeros(allowed.shape, dtype=self.dtype).masked_fill_(~allowed, float("-inf"))
            decode_mask = decode_mask.view(len(decode_tables), 1, 1, -1)
        meta = AttentionMetadata(
            slot_mapping=torch.cat(slot_parts),
            num_decodes=len(decode_tables),
            decode_block_tables=decode_bt,
            decode_mask=decode_mask,
            prefills=prefills,
        )
        return torch.tensor(ids, dtype=torch.long), torch.cat(pos_parts), meta

    @torch.inference_mode()
    def warm_up(self, max_num_batched_tokens: int, max_num_seqs: int) -> float:
        """Run a full-budget prefill and a full decode batch once (kernel set-up, allocator growth)."""
        started = time.monotonic()
        bs = self.block_size
        n = min(max_num_batched_tokens, (self.num_blocks - 1) * bs, self.model.cos.shape[0])
        if n >= 2:
            blocks = torch.arange(cdiv(n, bs))
            pos = torch.arange(n)
            meta = AttentionMetadata(pos.clone(), 0, None, None, [PrefillSegment(0, n, n, blocks, None)])
            hidden = self.model.forward(torch.zeros(n, dtype=torch.long), pos, meta, self.kv_cache)
            self.model.compute_logits(hidden[-max_num_seqs:])
        b = min(max_num_seqs, self.num_blocks)
        tables = torch.arange(b).view(b, 1)
        mask = torch.zeros(b, 1, 1, bs, dtype=self.dtype)
        meta = AttentionMetadata(tables.view(-1) * bs, b, tables, mask, [])
        hidden = self.model.forward(
            torch.zeros(b, dtype=torch.long), torch.zeros(b, dtype=torch.long), meta, self.kv_cache
        )
        self.model.compute_logits(hidden)
        return time.monotonic() - started
