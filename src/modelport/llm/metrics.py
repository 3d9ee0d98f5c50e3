"""Prometheus metrics of an LLM instance (`GET /metrics`), on a registry of its own.

Latency histograms are observed by the engine as tokens come out (`observe`); counters and
gauges are read from the engine's snapshot at scrape time, so they can never drift from it.

| metric | kind | meaning |
|---|---|---|
| `modelport_llm_time_to_first_token_seconds` | histogram | arrival → first token |
| `modelport_llm_time_per_output_token_seconds` | histogram | gap between consecutive tokens |
| `modelport_llm_e2e_request_latency_seconds` | histogram | arrival → finish |
| `modelport_llm_prefix_cache_queries_total` | counter | prompt tokens looked up in the prefix cache |
| `modelport_llm_prefix_cache_hits_total` | counter | of those, found (hit rate = hits / queries) |
| `modelport_llm_num_preemptions_total` | counter | requests preempted (recomputed later) |
| `modelport_llm_prompt_tokens_total`, `..._generation_tokens_total` | counter | tokens processed |
| `modelport_llm_requests_finished_total{finish_reason}` | counter | finished requests |
| `modelport_llm_num_requests_running`, `..._waiting` | gauge | scheduler queues |
| `modelport_llm_kv_blocks_used`, `..._cached`, `..._total` | gauge | KV pool (used = referenced) |
| `modelport_llm_kv_cache_usage_ratio` | gauge | used / total |
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PREFIX = "modelport_llm_"
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2.5, 5, 10, 20, 40, 80)
TPOT_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2.5, 5)
E2E_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 60, 120, 300)


class LLMMetrics:
    def __init__(self, model_name: str) -> None:
        self.registry = CollectorRegistry()
        self.model_name = model_name
        labels = ["model_name"]
        self._histograms = {
            "ttft": Histogram(
                PREFIX + "time_to_first_token_seconds",
                "Time from arrival to the first output token.",
                labels,
                buckets=TTFT_BUCKETS,
                registry=self.registry,
            ),
            "tpot": Histogram(
                PREFIX + "time_per_output_token_seconds",
                "Time between consecutive output tokens of a request.",
                labels,
                buckets=TPOT_BUCKETS,
                registry=self.registry,
            ),
            "e2e": Histogram(
                PREFIX + "e2e_request_latency_seconds",
                "Time from arrival to the last token.",
                labels,
                buckets=E2E_BUCKETS,
                registry=self.registry,
            ),
        }
        self._snapshot: Callable[[], dict[str, Any]] | None = None
        self.registry.register(_EngineCollector(self))

    def observe(self, name: str, seconds: float) -> None:
        self._histograms[name].labels(self.model_name).observe(seconds)

    def attach(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        """Read counters and gauges from `snapshot()` (the engine's) at every scrape."""
        self._snapshot = snapshot

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _EngineCollector(Collector):
    def __init__(self, metrics: LLMMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        if self.metrics._snapshot is None:
            return
        s = self.metrics._snapshot()
        name = [self.metrics.model_name]

        def counter(metric: str, doc: str, value: float) -> Metric:
            m = CounterMetricFamily(PREFIX + metric, doc, labels=["model_name"])
            m.add_metric(name, value)
            return m

        def gauge(metric: str, doc: str, value: float) -> Metric:
            m = GaugeMetricFamily(PREFIX + metric, doc, labels=["model_name"])
            m.add_metric(name, value)
            return m

        yield counter(
            "prefix_cache_queries",
            "Prompt tokens looked up in the prefix cache.",
            s["prefix_cache_queried_tokens"],
        )
        yield counter("prefix_cache_hits", "Prompt tokens found in the prefix cache.", s["prefix_cache_hit_tokens"])
        yield counter("num_preemptions", "Requests preempted to free KV blocks.", s["num_preemptions"])
        yield counter("prompt_tokens", "Prompt tokens of requests that produced a token.", s["prompt_tokens_total"])
        yield counter("generation_tokens", "Output tokens generated.", s["generation_tokens_total"])
        finished = CounterMetricFamily(
            PREFIX + "requests_finished", "Finished requests.", labels=["model_name", "finish_reason"]
        )
        for reason, count in s["requests_finished"].items():
            finished.add_metric([*name, reason], count)
        yield finished
        yield gauge("num_requests_running", "Requests in the running batch.", s["num_requests_running"])
        yield gauge("num_requests_waiting", "Requests waiting to be scheduled.", s["num_requests_waiting"])
        yield gauge("kv_blocks_used", "KV blocks referenced by requests.", s["kv_blocks_used"])
        yield gauge("kv_blocks_cached", "KV blocks holding a reusable prefix.", s["kv_blocks_cached"])
        yield gauge("kv_blocks_total", "KV blocks in the pool.", s["kv_blocks_total"])
        yield gauge("kv_cache_usage_ratio", "Used KV blocks / total.", s["kv_usage"])
