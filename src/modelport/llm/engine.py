"""The LLM engine: the step loop tying scheduler, model runner, sampler and detokenizer together.

`LLMEngine` is synchronous: `add_request`, then `step()` until the request's output says
finished. Each step schedules work (continuous batching), runs one forward pass, samples the
requests that reached the end of their known tokens, detokenizes, checks stop conditions and
frees finished requests. `AsyncLLMEngine` runs those steps on a background thread and delivers
each request's outputs to an asyncio queue; requests added between steps join the running batch.

Only the engine thread touches engine state; the asyncio side talks to it through an inbox.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from modelport.llm.block_pool import BlockPool
from modelport.llm.config import EngineConfig, ModelConfig
from modelport.llm.detokenizer import IncrementalDetokenizer
from modelport.llm.kv_cache_manager import HASH_NAME, KVCacheManager
from modelport.llm.request import FinishReason, Request, RequestOutput, SamplingParams
from modelport.llm.scheduler import Scheduler

log = logging.getLogger("modelport.llm")

DEFAULT_MAX_MODEL_LEN = 8192


class InvalidRequest(ValueError):
    """A request the engine cannot run (too long, bad token ids); `param` names the culprit."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class TimingObserver(Protocol):
    def observe(self, name: str, seconds: float) -> None:
        """`name` is "ttft", "tpot" (each later token) or "e2e" (arrival to finish)."""


@dataclass
class EngineStats:
    prompt_tokens: int = 0
    generation_tokens: int = 0
    finished: dict[str, int] = field(default_factory=dict)
    ttft_sum: float = 0.0
    ttft_count: int = 0
    tpot_sum: float = 0.0
    tpot_count: int = 0
    steps: int = 0


def load_tokenizer(checkpoint: Any) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(checkpoint))


class LLMEngine:
    def __init__(self, config: EngineConfig, tokenizer: Any = None, observer: TimingObserver | None = None):
        from modelport.llm.model_runner import ModelRunner, set_threads
        from modelport.llm.sampler import Sampler

        self.config = config
        self.model_config = mc = ModelConfig.from_checkpoint(config.checkpoint)
        self.threads = set_threads(config.threads)
        dtype_bytes = 4 if config.dtype == "float32" else 2
        bs = config.block_size
        num_blocks = config.num_kv_blocks or max(
            2, config.kv_cache_mb * 2**20 // (mc.kv_bytes_per_token(dtype_bytes) * bs)
        )
        limits = [mc.max_position_embeddings, num_blocks * bs]
        limits.append(config.max_model_len or DEFAULT_MAX_MODEL_LEN)
        if mc.sliding_window:
            limits.append(mc.sliding_window)  # beyond it, full attention would differ from the model's
        self.max_model_len = min(limits)
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(config.checkpoint)
        eos = set(mc.eos_token_ids)
        if getattr(self.tokenizer, "eos_token_id", None) is not None:
            eos.add(self.tokenizer.eos_token_id)
        self.eos_token_ids = frozenset(eos)
        self.pool = BlockPool(num_blocks)
        self.kv = KVCacheManager(self.pool, bs, config.enable_prefix_caching)
        max_batched = max(config.max_num_batched_tokens, config.max_num_seqs)
        self.scheduler = Scheduler(self.kv, config.max_num_seqs, max_batched)
        self.runner = ModelRunner(mc, config.checkpoint, config.dtype, num_blocks, bs, self.max_model_len)
        self.sampler = Sampler()
        self.requests: dict[str, Request] = {}
        self.stats = EngineStats()
        self.observer = observer
        log.info("warm-up done in %.2f s", self.runner.warm_up(max_batched, config.max_num_seqs))

    # -- requests -------------------------------------------------------------------------------

    def check_request(self, prompt_token_ids: list[int], params: SamplingParams) -> None:
        """Raise InvalidRequest if the request cannot run; safe to call from any thread."""
        n = len(prompt_token_ids)
        if n == 0:
            raise InvalidRequest("the prompt is empty", "prompt")
        if n + params.max_tokens > self.max_model_len:
            raise InvalidRequest(
                f"This model's maximum context length is {self.max_model_len} tokens. However, you "
                f"requested {n + params.max_tokens} tokens ({n} in the prompt, {params.max_tokens} "
                "for the completion). Please reduce the prompt or max_tokens.",
                "max_tokens" if n < self.max_model_len else "prompt",
            )
        vocab = self.model_config.vocab_size
        if any(not 0 <= t < vocab for t in prompt_token_ids):
            raise InvalidRequest(f"prompt token ids must be in [0, {vocab})", "prompt")

    def add_request(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        cache_salt: str | None = None,
        arrival_time: float | None = None,
    ) -> None:
        """Queue a request; `arrival_time` (time.monotonic()) is when the client asked, for TTFT."""
        self.check_request(prompt_token_ids, params)
        if request_id in self.requests:
            raise InvalidRequest(f"duplicate request id {request_id}")
        req = Request(request_id, list(prompt_token_ids), params, self.eos_token_ids, cache_salt)
        if arrival_time is not None:
            req.arrival_time = arrival_time
        req.detokenizer = IncrementalDetokenizer(self.tokenizer, req.prompt_token_ids, params)
        self.requests[request_id] = req
        self.scheduler.add(req)

    def abort(self, request_id: str) -> RequestOutput | None:
        req = self.requests.pop(request_id, None)
        if req is None:
            return None
        self.scheduler.finish(req, FinishReason.ABORT)
        self._count_finished(req)
        return self._output(req, [], None, "")

    @property
    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished

    # -- the step -------------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        out = self.scheduler.schedule()
        if not out.scheduled:
            return []
        self.stats.steps += 1
        result = self.runner.execute(out, self.kv)
        if not result.sampling:
            return []
        reqs = [s.request for s in result.sampling]
        sampled = self.sampler(result.logits, reqs)
        now = time.monotonic()
        return [self._process(req, token, lp, now) for req, (token, lp) in zip(reqs, sampled, strict=True)]

    def _process(self, req: Request, token: int, logprob: Any, now: float) -> RequestOutput:
        req.append_token(token)
        self._observe_token(req, now)
        p = req.params
        reason: FinishReason | None = None
        is_eos = token in req.eos_token_ids and not p.ignore_eos
        stop_token = is_eos or token in p.stop_token_ids
        matched = req.detokenizer.update([token], skip_last=stop_token)
        if stop_token:
            reason, req.stop_reason = FinishReason.STOP, (None if is_eos else token)
        elif matched is not None:
            reason, req.stop_reason = FinishReason.STOP, matched
        elif req.num_output_tokens >= p.max_tokens or req.num_tokens >= self.max_model_len:
            reason = FinishReason.LENGTH
        if reason is not None:
            self.scheduler.finish(req, reason)
            del self.requests[req.request_id]
            self._count_finished(req)
            if self.observer:
                self.observer.observe("e2e", now - req.arrival_time)
        text = req.detokenizer.take(finished=reason is not None)
        return self._output(req, [token], [logprob] if logprob is not None else None, text)

    def _observe_token(self, req: Request, now: float) -> None:
        if req.first_token_time is None:
            req.first_token_time = now
            ttft = now - req.arrival_time
            self.stats.ttft_sum += ttft
            self.stats.ttft_count += 1
            self.stats.prompt_tokens += req.num_prompt_tokens
            if self.observer:
                self.observer.observe("ttft", ttft)
        else:
            assert req.last_token_time is not None
            tpot = now - req.last_token_time
            self.stats.tpot_sum += tpot
            self.stats.tpot_count += 1
            if self.observer:
                self.observer.observe("tpot", tpot)
        req.last_token_time = now
        self.stats.generation_tokens += 1

    def _count_finished(self, req: Request) -> None:
        key = str(req.finish_reason)
        self.stats.finished[key] = self.stats.finished.get(key, 0) + 1

    def _output(self, req: Request, tokens: list[int], logprobs: Any, text: str) -> RequestOutput:
        return RequestOutput(
            request_id=req.request_id,
            new_token_ids=tokens,
            new_text=text,
            new_logprobs=logprobs,
            finished=req.is_finished,
            finish_reason=req.finish_reason,
            stop_reason=req.stop_reason,
            num_prompt_tokens=req.num_prompt_tokens,
            num_output_tokens=req.num_output_tokens,
            num_cached_tokens=max(req.num_cached_tokens, 0),
        )

    # -- introspection --------------------------------------------------------------------------

    def reset_prefix_cache(self) -> int:
        return self.pool.reset_prefix_cache()

    def snapshot(self) -> dict[str, Any]:
        """Counters and gauges, plain JSON (read from another thread: values may be one step old)."""
        s, sched, pool = self.stats, self.scheduler.stats, self.pool
        queried = sched.prefix_queried_tokens
        return {
            "model": self.config.served_model_name,
            "dtype": self.config.dtype,
            "max_model_len": self.max_model_len,
            "max_num_seqs": self.scheduler.max_num_seqs,
            "max_num_batched_tokens": self.scheduler.max_num_batched_tokens,
            "block_size": self.kv.block_size,
            "prefix_caching": self.kv.enable_caching,
            "prefix_hash": HASH_NAME,
            "num_requests_running": len(self.scheduler.running),
            "num_requests_waiting": len(self.scheduler.waiting),
            "kv_blocks_total": pool.num_blocks,
            "kv_blocks_used": pool.num_used_blocks,
            "kv_blocks_cached": pool.num_cached_blocks,
            "kv_usage": round(pool.num_used_blocks / pool.num_blocks, 4),
            "prefix_cache_queried_tokens": queried,
            "prefix_cache_hit_tokens": sched.prefix_hit_tokens,
            "prefix_cache_hit_rate": round(sched.prefix_hit_tokens / queried, 4) if queried else 0.0,
            "num_preemptions": sched.num_preemptions,
            "prompt_tokens_total": s.prompt_tokens,
            "generation_tokens_total": s.generation_tokens,
            "requests_finished": dict(s.finished),
            "mean_ttft_s": round(s.ttft_sum / s.ttft_count, 6) if s.ttft_count else None,
            "mean_tpot_s": round(s.tpot_sum / s.tpot_count, 6) if s.tpot_count else None,
            "steps": s.steps,
        }


class EngineDeadError(RuntimeError):
    """The engine thread failed; every request in flight gets this, and the instance is unhealthy."""


@dataclass
class GenerationRequest:
    prompt_token_ids: list[int]
    params: SamplingParams
    cache_salt: str | None = None
    arrival_time: float = field(default_factory=time.monotonic)


class AsyncLLMEngine:
    """Runs `LLMEngine.step()` on a background thread; `generate` streams outputs to asyncio."""

    _ids = itertools.count()

    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self._inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._streams: dict[str, tuple[asyncio.Queue[tuple[int, RequestOutput]], int]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.error: str | None = None

    def start(self) -> None:
        """Start the engine thread; call from the event loop that will consume outputs."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="llm-engine", daemon=True)
        self._thread.start()

    def shutdown(self, timeout: float = 5.0) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    async def generate(self, requests: list[GenerationRequest]) -> AsyncIterator[tuple[int, RequestOutput]]:
        """Submit requests together (they join the same step); yield `(index, output)` as they come.

        Leaving the iteration early (client gone, cancellation) aborts the unfinished requests.
        """
        if self.error is not None:
            raise EngineDeadError(self.error)
        for r in requests:
            self.engine.check_request(r.prompt_token_ids, r.params)
        out: asyncio.Queue[tuple[int, RequestOutput]] = asyncio.Queue()
        ids = [f"req-{next(self._ids)}" for _ in requests]
        for i, rid in enumerate(ids):
            self._streams[rid] = (out, i)
        self._send("add", list(zip(ids, requests, strict=True)))
        pending = set(ids)
        try:
            while pending:
                index, output = await out.get()
                if output.error is not None:
                    raise EngineDeadError(output.error)
                if output.finished:
                    pending.discard(output.request_id)
                yield index, output
        finally:
            if pending:
                self._send("abort", list(pending))
            for rid in ids:
                self._streams.pop(rid, None)

    def _send(self, kind: str, payload: Any) -> None:
        self._inbox.put((kind, payload))
        self._wake.set()

    def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            self._drain_inbox()
            if not self.engine.has_unfinished:
                self._wake.wait()
                continue
            try:
                outputs = self.engine.step()
            except Exception as exc:  # the engine's state is unknown now: fail everything in flight
                log.exception("engine step failed")
                self.error = f"{type(exc).__name__}: {exc}"
                self._deliver_error()
                return
            if outputs:
                assert self._loop is not None
                self._loop.call_soon_threadsafe(self._dispatch, outputs)

    def _drain_inbox(self) -> None:
        outputs = []
        while True:
            try:
                kind, payload = self._inbox.get_nowait()
            except queue.Empty:
                break
            if kind == "add":
                for rid, r in payload:
                    try:
                        self.engine.add_request(rid, r.prompt_token_ids, r.params, r.cache_salt, r.arrival_time)
                    except InvalidRequest as exc:  # checked before sending; kept for safety
                        outputs.append(_failed_output(rid, str(exc)))
            else:
                outputs += [o for o in map(self.engine.abort, payload) if o is not None]
        if outputs and self._loop is not None:
            self._loop.call_soon_threadsafe(self._dispatch, outputs)

    def _dispatch(self, outputs: list[RequestOutput]) -> None:
        for output in outputs:
            entry = self._streams.get(output.request_id)
            if entry is not None:
                entry[0].put_nowait((entry[1], output))

    def _deliver_error(self) -> None:
        def fail_all() -> None:
            for rid, (q, index) in list(self._streams.items()):
                q.put_nowait((index, _failed_output(rid, self.error or "engine failed")))

        assert self._loop is not None
        self._loop.call_soon_threadsafe(fail_all)


def _failed_output(request_id: str, error: str) -> RequestOutput:
    return RequestOutput(request_id, [], "", None, True, FinishReason.ABORT, None, 0, 0, 0, error)
