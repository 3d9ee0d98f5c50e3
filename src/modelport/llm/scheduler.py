"""The scheduler: which requests compute how many tokens in the next engine step (continuous batching).

Each step gets a token budget (`max_num_batched_tokens`) and a cap on running requests
(`max_num_seqs`). A step is built in this order:

1. running requests that are decoding (one token each), then running requests still in their
   prefill, each taking as many tokens as remain or as the budget allows — a long prompt is cut
   into chunks, so decodes are never starved by it (chunked prefill);
2. if nothing had to be preempted, waiting requests in arrival order (preempted ones first):
   their cached prefix is reused, the rest is prefilled within the budget. New requests thus join
   the running batch between steps.

When the pool has no room for a running request's tokens, the lowest-priority running request
not yet scheduled in this step (the most recently admitted) is preempted by recompute: its
blocks are freed (its full blocks stay cached, so it usually resumes from its own prefix) and it
goes back to the front of the waiting queue. What must stay true:

* the tokens scheduled in a step never exceed the budget, nor the running requests `max_num_seqs`;
* every scheduled request has KV slots for all the tokens it computes in the step;
* a request is in exactly one of `waiting` / `running` until it finishes, then in neither.

`schedule()` advances `num_computed_tokens` of the scheduled requests: the engine must run the
step it returns.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from modelport.llm.kv_cache_manager import KVCacheManager
from modelport.llm.request import FinishReason, Request, RequestStatus


@dataclass
class ScheduledRequest:
    """`request` computes tokens `[start, start + num_tokens)` in this step."""

    request: Request
    start: int
    num_tokens: int

    @property
    def samples(self) -> bool:
        """True when this step reaches the end of the known tokens, so a next token is sampled."""
        return self.start + self.num_tokens == self.request.num_tokens


@dataclass
class SchedulerOutput:
    """One step's work: single-token entries (decodes) first, then prefill chunks."""

    scheduled: list[ScheduledRequest] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)

    @property
    def num_batched_tokens(self) -> int:
        return sum(s.num_tokens for s in self.scheduled)


@dataclass
class SchedulerStats:
    num_preemptions: int = 0
    prefix_queried_tokens: int = 0  # prompt tokens of admitted requests (first admission only)
    prefix_hit_tokens: int = 0  # of those, found in the prefix cache


class Scheduler:
    """FCFS continuous-batching scheduler over a `KVCacheManager`."""

    def __init__(self, kv: KVCacheManager, max_num_seqs: int, max_num_batched_tokens: int) -> None:
        if max_num_batched_tokens < max_num_seqs:
            raise ValueError("max_num_batched_tokens must be >= max_num_seqs (one decode token each)")
        self.kv = kv
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.stats = SchedulerStats()

    @property
    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, request: Request) -> None:
        request.status = RequestStatus.WAITING
        self.waiting.append(request)

    def finish(self, request: Request, reason: FinishReason) -> None:
        """Take a request out of the queues (done, or aborted) and free its blocks."""
        if request.status is RequestStatus.RUNNING:
            self.running.remove(request)
        elif request.status is RequestStatus.WAITING:
            self.waiting.remove(request)
        self.kv.free(request)
        request.status = RequestStatus.FINISHED
        request.finish_reason = reason

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        scheduled: set[str] = set()
        # Decodes (one token left to compute) before prefill chunks; admission order within each.
        for req in sorted(self.running, key=lambda r: r.num_tokens - r.num_computed_tokens > 1):
            if budget == 0:
                break
            if req.status is not RequestStatus.RUNNING:  # preempted earlier in this loop
                continue
            n = min(req.num_tokens - req.num_computed_tokens, budget)
            while not self.kv.allocate_slots(req, n):
                victim = next(r for r in reversed(self.running) if r.request_id not in scheduled)
                self._preempt(victim)
                out.preempted.append(victim)
                if victim is req:
                    break
            if req.status is RequestStatus.RUNNING:
                out.scheduled.append(ScheduledRequest(req, req.num_computed_tokens, n))
                scheduled.add(req.request_id)
                budget -= n
        if not out.preempted:
            budget = self._admit_waiting(out, budget)
        out.scheduled.sort(key=lambda s: s.num_tokens != 1)
        for s in out.scheduled:
            s.request.num_computed_tokens += s.num_tokens
        return out

    def _admit_waiting(self, out: SchedulerOutput, budget: int) -> int:
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            req = self.waiting[0]
            hits = self.kv.get_computed_blocks(req)
            num_hit = len(hits) * self.kv.block_size
            n = min(req.num_tokens - num_hit, budget)
            if not self.kv.allocate_slots(req, n, hits):
                break
            self.waiting.popleft()
            req.status = RequestStatus.RUNNING
            req.num_computed_tokens = num_hit
            self.running.append(req)
            if req.num_cached_tokens < 0:
                req.num_cached_tokens = num_hit
                self.stats.prefix_queried_tokens += req.num_tokens
                self.stats.prefix_hit_tokens += num_hit
            out.scheduled.append(ScheduledRequest(req, num_hit, n))
            budget -= n
        return budget

    def _preempt(self, request: Request) -> None:
        self.running.remove(request)
        self.kv.free(request)
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        request.status = RequestStatus.WAITING
        self.waiting.appendleft(request)
        self.stats.num_preemptions += 1
