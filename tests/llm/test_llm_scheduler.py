"""Scheduler: token budget, decodes before prefill chunks, continuous batching, preemption order."""

from __future__ import annotations

from modelport.llm.block_pool import BlockPool
from modelport.llm.kv_cache_manager import KVCacheManager
from modelport.llm.request import FinishReason, Request, RequestStatus, SamplingParams
from modelport.llm.scheduler import Scheduler, SchedulerOutput


def make(num_blocks: int = 64, block_size: int = 4, max_num_seqs: int = 8, budget: int = 16) -> Scheduler:
    return Scheduler(KVCacheManager(BlockPool(num_blocks), block_size), max_num_seqs, budget)


def req(rid: str, n: int, first: int = 0) -> Request:
    return Request(rid, list(range(first, first + n)), SamplingParams(max_tokens=10_000))


def step(s: Scheduler) -> SchedulerOutput:
    """Schedule, then do what the engine does: a sampled token for every request that samples."""
    out = s.schedule()
    for sr in out.scheduled:
        if sr.samples:
            sr.request.append_token(7)
    return out


def test_budget_and_max_num_seqs_are_respected() -> None:
    s = make(num_blocks=200, max_num_seqs=3, budget=10)
    for i in range(5):
        s.add(req(f"r{i}", 7, first=100 * i))
    for _ in range(20):
        out = step(s)
        assert out.num_batched_tokens <= 10
        assert len(s.running) <= 3
        assert len({x.request.request_id for x in out.scheduled}) == len(out.scheduled)


def test_long_prefill_is_chunked_and_decodes_go_first() -> None:
    s = make(num_blocks=400, budget=16)
    a, b = req("a", 3), req("b", 5, first=50)
    s.add(a)
    s.add(b)
    step(s)  # both prompts fit in one step
    assert a.num_output_tokens == b.num_output_tokens == 1
    long = req("long", 100, first=500)
    s.add(long)
    chunks = []
    while long.num_output_tokens == 0:
        out = step(s)
        ids = [x.request.request_id for x in out.scheduled]
        assert ids[:2] == ["a", "b"], "decodes come first and every step"
        assert [x.num_tokens for x in out.scheduled[:2]] == [1, 1]
        chunks.append(out.scheduled[2].num_tokens)
    assert sum(chunks) == 100 and max(chunks) == 14  # 16 - 2 decode tokens
    assert a.num_output_tokens == b.num_output_tokens == 1 + len(chunks)


def test_new_requests_join_the_running_batch_between_steps() -> None:
    s = make()
    s.add(req("a", 4))
    step(s)
    step(s)
    s.add(req("b", 6, first=20))
    out = step(s)
    assert [(x.request.request_id, x.num_tokens) for x in out.scheduled] == [("a", 1), ("b", 6)]


def test_preemption_takes_the_newest_request_and_requeues_it_first() -> None:
    # 6 blocks of 4 tokens; three requests of 8 tokens take 2 blocks each: the pool is full.
    s = make(num_blocks=6, block_size=4, budget=64)
    a, b, c = req("a", 8), req("b", 8, first=10), req("c", 8, first=20)
    for r in (a, b, c):
        s.add(r)
    step(s)
    assert s.kv.pool.num_free_blocks == 0
    out = step(s)  # every decode needs a new block: c goes, freeing 2 blocks for a and b
    assert [r.request_id for r in out.preempted] == ["c"]
    assert c.status is RequestStatus.WAITING and c.num_computed_tokens == 0 and s.waiting[0] is c
    assert s.kv.block_ids("c") == []
    assert [x.request.request_id for x in out.scheduled] == ["a", "b"]
    assert s.stats.num_preemptions == 1
    # The preempted request resumes (its own blocks were cached) once room is back.
    s.finish(a, FinishReason.STOP)
    out = step(s)
    assert "c" in [x.request.request_id for x in out.scheduled]
    assert c.num_cached_tokens == 0  # usage reports the hit at first admission only


def test_a_request_preempts_itself_when_it_is_the_newest() -> None:
    s = make(num_blocks=4, block_size=4, budget=64)
    a, b = req("a", 8), req("b", 8, first=10)
    s.add(a)
    s.add(b)
    step(s)
    s.running.reverse()  # b now has priority over a: a is the victim, and it is a that needs room
    out = step(s)
    assert [r.request_id for r in out.preempted] == ["a"]
    assert [x.request.request_id for x in out.scheduled] == ["b"]


def test_prefix_hits_are_counted_and_skip_computation() -> None:
    s = make(num_blocks=64, block_size=4, budget=64)
    first = req("a", 13)
    s.add(first)
    step(s)
    s.finish(first, FinishReason.STOP)
    again = req("b", 14)  # same 13 tokens + 1
    s.add(again)
    out = step(s)
    assert out.scheduled[0].start == 12 and out.scheduled[0].num_tokens == 2
    assert again.num_cached_tokens == 12
    assert s.stats.prefix_hit_tokens == 12 and s.stats.prefix_queried_tokens == 13 + 14
