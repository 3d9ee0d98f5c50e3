"""Per-request KV block tables and automatic prefix caching on top of the block pool.

A request's block table maps its token positions to pool blocks: token `p` lives in slot
`p % block_size` of block `table[p // block_size]`. Prefix caching keys every FULL block by a
hash chain, so a block hash names the block's tokens *and everything before them*:

    h_0 = H(ROOT, tokens[0:B], salt)        h_i = H(h_{i-1}, tokens[i*B:(i+1)*B])

with `H` = BLAKE2b-128 over the parent hash (16 bytes), the token ids as little-endian uint32,
and (first block only) the request's `cache_salt` in UTF-8, so tenants with different salts
never share blocks. `hash_block_tokens` / `prefix_block_hashes` are pure functions (no torch) that
a router can import to compute the same chain from token ids.

What must stay true:

* a request's table holds each block once, and the request holds exactly one reference on it;
* the first `num_cached_blocks(request)` blocks of a table are registered in the pool under the
  request's `block_hashes` (or were duplicates left uncached), and a block is registered only
  once its tokens' KV is being written in the same step — never a block whose tokens are unknown;
* a cache hit never covers the whole prompt: at least its last token is computed, to get logits.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

from modelport.llm.block_pool import BlockPool, KVBlock
from modelport.llm.request import Request

HASH_NAME = "blake2b-128(parent || uint32le(token_ids) [|| utf8(cache_salt) on block 0])"
_ROOT = bytes(16)


def hash_block_tokens(parent: bytes | None, token_ids: Sequence[int], salt: str | None = None) -> bytes:
    """Hash of one full block given its parent's hash (None for the first block)."""
    h = hashlib.blake2b(parent if parent is not None else _ROOT, digest_size=16)
    h.update(struct.pack(f"<{len(token_ids)}I", *token_ids))
    if salt:
        h.update(salt.encode())
    return h.digest()


def prefix_block_hashes(
    token_ids: Sequence[int], block_size: int, salt: str | None = None, start: Sequence[bytes] = ()
) -> list[bytes]:
    """The hash chain of every full block of `token_ids`, continuing the already known `start`."""
    hashes = list(start)
    parent = hashes[-1] if hashes else None
    for i in range(len(hashes), len(token_ids) // block_size):
        parent = hash_block_tokens(parent, token_ids[i * block_size : (i + 1) * block_size], salt if i == 0 else None)
        hashes.append(parent)
    return hashes


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class KVCacheManager:
    """Decides, per request, which blocks it uses: cache hits first, then fresh ones."""

    def __init__(self, pool: BlockPool, block_size: int, enable_caching: bool = True) -> None:
        self.pool = pool
        self.block_size = block_size
        self.enable_caching = enable_caching
        self._tables: dict[str, list[KVBlock]] = {}
        self._num_cached: dict[str, int] = {}

    def block_ids(self, request_id: str) -> list[int]:
        return [b.block_id for b in self._tables.get(request_id, ())]

    def num_cached_blocks(self, request_id: str) -> int:
        return self._num_cached.get(request_id, 0)

    def update_hashes(self, request: Request) -> None:
        """Extend `request.block_hashes` to every full block of its known tokens."""
        if len(request.block_hashes) < request.num_tokens // self.block_size:
            request.block_hashes = prefix_block_hashes(
                request.all_token_ids, self.block_size, request.cache_salt, request.block_hashes
            )

    def get_computed_blocks(self, request: Request) -> list[KVBlock]:
        """The longest run of cached blocks matching the request's leading full blocks.

        Stops one token short of the whole sequence: the last token is always computed. The
        blocks are not referenced yet; pass them to `allocate_slots` in the same scheduling step.
        """
        if not self.enable_caching:
            return []
        self.update_hashes(request)
        hits = []
        for block_hash in request.block_hashes[: (request.num_tokens - 1) // self.block_size]:
            block = self.pool.get_cached(block_hash)
            if block is None:
                break
            hits.append(block)
        return hits

    def allocate_slots(self, request: Request, num_new_tokens: int, computed_blocks: Sequence[KVBlock] = ()) -> bool:
        """Make room for `num_new_tokens` more tokens after the computed ones; False if the pool is short.

        `computed_blocks` (a new request's cache hits) are referenced and put first in its table;
        they count as computed tokens. On success the newly full blocks are registered in the cache.
        On failure nothing changes.
        """
        table = self._tables.get(request.request_id, [])
        num_computed = request.num_computed_tokens + len(computed_blocks) * self.block_size
        total = num_computed + num_new_tokens
        num_needed = cdiv(total, self.block_size) - len(table) - len(computed_blocks)
        # Hits sitting in the free queue stop being allocatable once referenced.
        num_revived = sum(1 for b in computed_blocks if b.ref_count == 0)
        if max(num_needed, 0) + num_revived > self.pool.num_free_blocks:
            return False
        if request.request_id not in self._tables:
            self._tables[request.request_id] = table
            self._num_cached[request.request_id] = len(computed_blocks)
        self.pool.touch(computed_blocks)
        table.extend(computed_blocks)
        if num_needed > 0:
            table.extend(self.pool.allocate(num_needed))
        if self.enable_caching:
            self._cache_full_blocks(request, table, total // self.block_size)
        return True

    def _cache_full_blocks(self, request: Request, table: list[KVBlock], num_full: int) -> None:
        start = self._num_cached[request.request_id]
        if num_full <= start:
            return
        self.update_hashes(request)
        for i in range(start, num_full):
            if table[i].block_hash is None:
                self.pool.cache(table[i], request.block_hashes[i])
        self._num_cached[request.request_id] = num_full

    def free(self, request: Request) -> None:
        """Release the request's blocks; cached ones stay reusable until evicted (tail blocks first)."""
        table = self._tables.pop(request.request_id, [])
        self._num_cached.pop(request.request_id, None)
        self.pool.free(reversed(table))

    @property
    def num_requests(self) -> int:
        return len(self._tables)
