"""The KV block pool: fixed-size KV blocks, their reference counts, the free queue and the hash→block map.

The pool knows nothing of requests; it hands out block ids (rows of the KV cache tensor), takes
them back, and remembers which blocks hold a reusable full prefix block (keyed by its hash).
What must stay true (checked by `check_invariants`, exercised by the property tests):

* a block is in the free queue if and only if its `ref_count` is 0 — so a block someone
  references is never handed out, and a free block is never referenced;
* the free queue is in eviction order (head = evicted first): blocks holding no cached prefix
  come first (they lose nothing when reused), then cached-but-free blocks in least-recently-freed
  order (LRU). Freeing appends a cached block at the tail;
* `cached[h] is b` if and only if `b.block_hash == h`: one block per hash, and a block loses its
  hash exactly when it is evicted (re-allocated) — a free cached block can be revived by `touch`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(eq=False)
class KVBlock:
    """One block of `block_size` token slots in every layer's KV cache."""

    block_id: int
    ref_count: int = 0
    block_hash: bytes | None = None

    def __repr__(self) -> str:
        return f"KVBlock({self.block_id}, ref={self.ref_count}, cached={self.block_hash is not None})"


class NoFreeBlocksError(RuntimeError):
    """More blocks were asked for than the pool has free; callers check `num_free_blocks` first."""


class BlockPool:
    """Owns all `num_blocks` blocks. Not thread-safe: the engine thread is its only user."""

    def __init__(self, num_blocks: int) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.num_blocks = num_blocks
        self.blocks = [KVBlock(i) for i in range(num_blocks)]
        self._free: OrderedDict[int, KVBlock] = OrderedDict((b.block_id, b) for b in self.blocks)
        self._cached: dict[bytes, KVBlock] = {}
        self.num_evictions = 0

    @property
    def num_free_blocks(self) -> int:
        """Blocks that can be allocated now (free, including cached ones that would be evicted)."""
        return len(self._free)

    @property
    def num_used_blocks(self) -> int:
        """Blocks referenced by at least one request."""
        return self.num_blocks - len(self._free)

    @property
    def num_cached_blocks(self) -> int:
        """Blocks holding a reusable prefix block, referenced or not."""
        return len(self._cached)

    def get_cached(self, block_hash: bytes) -> KVBlock | None:
        return self._cached.get(block_hash)

    def allocate(self, n: int) -> list[KVBlock]:
        """Take `n` blocks from the head of the free queue (evicting their cached prefix), ref 1 each."""
        if n > len(self._free):
            raise NoFreeBlocksError(f"asked for {n} blocks, {len(self._free)} free")
        out = []
        for _ in range(n):
            _, block = self._free.popitem(last=False)
            if block.block_hash is not None:
                del self._cached[block.block_hash]
                block.block_hash = None
                self.num_evictions += 1
            block.ref_count = 1
            out.append(block)
        return out

    def touch(self, blocks: Iterable[KVBlock]) -> None:
        """Add a reference to each block (a prefix-cache hit); a free one leaves the free queue."""
        for block in blocks:
            if block.ref_count == 0:
                del self._free[block.block_id]
            block.ref_count += 1

    def free(self, blocks: Iterable[KVBlock]) -> None:
        """Drop one reference from each block; give them in eviction order (first = evicted first).

        A block whose count reaches 0 joins the free queue: at the tail if it holds a cached prefix
        (LRU), at the head if not (nothing is lost by reusing it first).
        """
        for block in blocks:
            if block.ref_count <= 0:
                raise AssertionError(f"double free of {block!r}")
            block.ref_count -= 1
            if block.ref_count == 0:
                self._free[block.block_id] = block
                if block.block_hash is None:
                    self._free.move_to_end(block.block_id, last=False)

    def cache(self, block: KVBlock, block_hash: bytes) -> bool:
        """Register a referenced, full block under `block_hash`; False if another block has it already.

        A duplicate stays uncached (one block per hash); its owner keeps using it normally.
        """
        if block.ref_count <= 0 or block.block_hash is not None:
            raise AssertionError(f"cannot cache {block!r}")
        if block_hash in self._cached:
            return False
        block.block_hash = block_hash
        self._cached[block_hash] = block
        return True

    def reset_prefix_cache(self) -> int:
        """Forget every cached block that is free (used by benchmarks and after weight changes)."""
        dropped = 0
        for block in list(self._free.values()):
            if block.block_hash is not None:
                del self._cached[block.block_hash]
                block.block_hash = None
                self._free.move_to_end(block.block_id, last=False)
                dropped += 1
        return dropped

    def check_invariants(self) -> None:
        """Raise AssertionError if any invariant of the module docstring does not hold (for tests)."""
        seen_cached = False
        for block_id, block in self._free.items():
            assert block.block_id == block_id and self.blocks[block_id] is block
            assert block.ref_count == 0, f"{block!r} is free but referenced"
            if block.block_hash is not None:
                seen_cached = True
            else:
                assert not seen_cached, f"uncached {block!r} behind a cached block in the free queue"
        for block in self.blocks:
            assert block.ref_count >= 0
            assert (block.ref_count == 0) == (block.block_id in self._free), f"{block!r} free-queue mismatch"
            if block.block_hash is not None:
                assert self._cached.get(block.block_hash) is block, f"{block!r} hash not mapped"
        for block_hash, block in self._cached.items():
            assert block.block_hash == block_hash
