"""Block pool and KV cache manager: unit tests and property tests over random request streams."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from modelport.llm.block_pool import BlockPool, NoFreeBlocksError
from modelport.llm.kv_cache_manager import KVCacheManager, hash_block_tokens, prefix_block_hashes
from modelport.llm.request import Request, SamplingParams


def request(rid: str, tokens: list[int], salt: str | None = None) -> Request:
    return Request(rid, tokens, SamplingParams(max_tokens=1000), cache_salt=salt)


def test_allocate_free_lru_order_and_eviction() -> None:
    pool = BlockPool(4)
    a, b = pool.allocate(2)
    assert pool.num_free_blocks == 2 and a.ref_count == b.ref_count == 1
    assert pool.cache(a, b"ha") and pool.cache(b, b"hb")
    pool.free([a, b])  # a first: a is evicted first
    pool.check_invariants()
    assert pool.get_cached(b"ha") is a
    fresh = pool.allocate(2)  # the two never-cached blocks come first
    assert {x.block_id for x in fresh} == {2, 3}
    assert pool.get_cached(b"ha") is a
    (c,) = pool.allocate(1)
    assert c is a and pool.get_cached(b"ha") is None and pool.num_evictions == 1
    assert pool.get_cached(b"hb") is b
    pool.check_invariants()


def test_touch_revives_a_free_cached_block_and_blocks_double_free() -> None:
    pool = BlockPool(2)
    (a,) = pool.allocate(1)
    pool.cache(a, b"h")
    pool.free([a])
    pool.touch([a])
    assert a.ref_count == 1 and pool.num_free_blocks == 1
    pool.touch([a])
    pool.free([a, a])
    with pytest.raises(AssertionError, match="double free"):
        pool.free([a])
    with pytest.raises(NoFreeBlocksError):
        pool.allocate(3)
    pool.check_invariants()


def test_duplicate_hash_stays_uncached() -> None:
    pool = BlockPool(2)
    a, b = pool.allocate(2)
    assert pool.cache(a, b"h")
    assert not pool.cache(b, b"h")
    assert b.block_hash is None and pool.get_cached(b"h") is a


def test_hash_chain_depends_on_everything_before_and_on_salt() -> None:
    h = prefix_block_hashes([1, 2, 3, 4, 5, 6, 7, 8, 9], 4)
    assert len(h) == 2
    assert h[1] == hash_block_tokens(h[0], [5, 6, 7, 8])
    assert prefix_block_hashes([0, 2, 3, 4, 5, 6, 7, 8], 4)[1] != h[1]  # same block, other parent
    salted = prefix_block_hashes([1, 2, 3, 4, 5, 6, 7, 8], 4, salt="tenant-a")
    assert salted[0] != h[0] and salted[1] != h[1]
    assert prefix_block_hashes([1, 2, 3, 4, 5, 6, 7, 8], 4, start=h[:1]) == h


def test_prefix_hit_reuses_blocks_but_never_the_whole_prompt() -> None:
    kv = KVCacheManager(BlockPool(16), block_size=4)
    first = request("a", list(range(12)))
    assert kv.get_computed_blocks(first) == []
    assert kv.allocate_slots(first, 12)
    first_blocks = kv.block_ids("a")
    kv.free(first)
    same = request("b", list(range(12)))
    hits = kv.get_computed_blocks(same)  # 3 full blocks, but the last token must be computed
    assert [b.block_id for b in hits] == first_blocks[:2]
    longer = request("c", [*range(12), 99])
    assert len(kv.get_computed_blocks(longer)) == 3
    salted = request("d", [*range(12), 99], salt="other")
    assert kv.get_computed_blocks(salted) == []


def test_allocate_counts_revived_hits_against_free_blocks() -> None:
    kv = KVCacheManager(BlockPool(3), block_size=2)
    a = request("a", [1, 2, 3, 4, 5, 6])
    assert kv.allocate_slots(a, 6)
    kv.free(a)  # 3 free blocks, all cached
    b = request("b", [1, 2, 3, 4, 7, 8, 9, 10])
    hits = kv.get_computed_blocks(b)
    assert len(hits) == 2
    # 2 revived hits + 2 new blocks > 3 free: refused, and nothing changed.
    assert not kv.allocate_slots(b, 4, hits)
    kv.pool.check_invariants()
    assert kv.pool.num_free_blocks == 3 and kv.block_ids("b") == []
    assert kv.allocate_slots(b, 2, hits)
    assert kv.block_ids("b")[:2] == [h.block_id for h in hits]


# -- property test: a random stream of requests through the cache manager --------------------------

BLOCK = 4
SYSTEM_PROMPTS = [[1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 9, 9, 9, 9], [5, 5, 5, 5]]


class CacheMachine(RuleBasedStateMachine):
    """Requests arrive, compute chunks, decode, finish and get preempted over a small pool.

    A shadow copy of the KV content (which (salt, token) each slot holds) checks the real
    property: a cache hit only ever returns blocks that hold exactly the request's tokens.
    """

    def __init__(self) -> None:
        super().__init__()
        self.kv = KVCacheManager(BlockPool(12), BLOCK)
        self.running: dict[str, Request] = {}
        self.waiting: list[Request] = []
        self.content: dict[int, list[tuple[str | None, int] | None]] = {}
        self.next_id = 0

    def _write(self, req: Request, start: int, n: int) -> None:
        table = self.kv.block_ids(req.request_id)
        for pos in range(start, start + n):
            block = self.content.setdefault(table[pos // BLOCK], [None] * BLOCK)
            block[pos % BLOCK] = (req.cache_salt, req.all_token_ids[pos])

    def _admit(self, req: Request, chunk: int) -> bool:
        hits = self.kv.get_computed_blocks(req)
        for i, block in enumerate(hits):
            expected = [(req.cache_salt, t) for t in req.all_token_ids[i * BLOCK : (i + 1) * BLOCK]]
            assert self.content.get(block.block_id) == expected, "a cache hit returned foreign KV"
        start = len(hits) * BLOCK
        n = min(chunk, req.num_tokens - start)
        if not self.kv.allocate_slots(req, n, hits):
            return False
        req.num_computed_tokens = start
        self._write(req, start, n)
        req.num_computed_tokens += n
        self.running[req.request_id] = req
        return True

    @rule(
        system=st.sampled_from(SYSTEM_PROMPTS),
        tail=st.lists(st.integers(0, 3), max_size=9),
        salt=st.sampled_from([None, None, "t1"]),
        chunk=st.integers(1, 12),
    )
    def arrive(self, system: list[int], tail: list[int], salt: str | None, chunk: int) -> None:
        req = request(f"r{self.next_id}", system + tail, salt)
        self.next_id += 1
        if not self._admit(req, chunk):
            self.waiting.append(req)

    @precondition(lambda self: self.waiting)
    @rule(chunk=st.integers(1, 12))
    def readmit(self, chunk: int) -> None:
        req = self.waiting[0]
        if self._admit(req, chunk):
            self.waiting.pop(0)

    @precondition(lambda self: self.running)
    @rule(data=st.data(), chunk=st.integers(1, 6), token=st.integers(0, 3))
    def advance(self, data: st.DataObject, chunk: int, token: int) -> None:
        req = self.running[data.draw(st.sampled_from(sorted(self.running)))]
        if req.num_computed_tokens == req.num_tokens:
            req.append_token(token)  # decode: the sampled token is computed in the next step
        n = min(chunk, req.num_tokens - req.num_computed_tokens)
        if self.kv.allocate_slots(req, n):
            self._write(req, req.num_computed_tokens, n)
            req.num_computed_tokens += n

    @precondition(lambda self: self.running)
    @rule(data=st.data(), preempt=st.booleans())
    def leave(self, data: st.DataObject, preempt: bool) -> None:
        req = self.running.pop(data.draw(st.sampled_from(sorted(self.running))))
        self.kv.free(req)
        if preempt:
            req.num_computed_tokens = 0
            self.waiting.insert(0, req)

    @invariant()
    def pool_is_consistent(self) -> None:
        pool = self.kv.pool
        pool.check_invariants()
        refs = {b.block_id: 0 for b in pool.blocks}
        for req in self.running.values():
            table = self.kv.block_ids(req.request_id)
            assert len(table) == len(set(table)), "a block twice in one table"
            assert len(table) * BLOCK >= req.num_computed_tokens
            for block_id in table:
                refs[block_id] += 1
            for i in range(self.kv.num_cached_blocks(req.request_id)):
                block = pool.blocks[table[i]]
                assert block.block_hash in (None, req.block_hashes[i])
        for req in self.waiting:
            assert self.kv.block_ids(req.request_id) == []
        for block in pool.blocks:
            assert block.ref_count == refs[block.block_id], f"{block!r}: {refs[block.block_id]} holders"
        assert self.kv.num_requests == len(self.running)

    def teardown(self) -> None:
        for req in list(self.running.values()):
            self.kv.free(req)
        assert self.kv.pool.num_free_blocks == self.kv.pool.num_blocks, "blocks leaked"


TestCacheMachine = CacheMachine.TestCase
TestCacheMachine.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None, suppress_health_check=list(HealthCheck)
)
