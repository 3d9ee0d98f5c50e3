"""Metrics: the gateway's Prometheus series, counted in plain Python on the hot path, exported on scrape.

Series (in the default registry, so the process's `/metrics` shows them):
`modelport_gateway_requests_total{service_id,model_version,code}`,
`modelport_gateway_request_duration_seconds{service_id,model_version}` (histogram),
`modelport_gateway_errors_total{service_id,error_code}`, `modelport_gateway_inflight{service_id}`;
for streams (SSE / JSON lines responses) and WebSocket sessions, per service:
`modelport_gateway_stream_duration_seconds` (histogram), `modelport_gateway_stream_events_total`,
`modelport_gateway_websocket_sessions_total{service_id,close_code}` (close code sent to the client),
`modelport_gateway_websocket_duration_seconds` (histogram),
`modelport_gateway_websocket_messages_total{service_id,direction}` (`in`: client to model, `out`),
`modelport_gateway_websocket_open{service_id}`.

prometheus_client's own metric objects take a lock per update and a lookup per `labels()`; the
gateway instead bumps integers in per-(service, version) objects it holds, and one collector
turns them into metric families when scraped. All gateways in a process share these counters.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0)
_LE = [*(f"{b:g}" for b in BUCKETS), "+Inf"]

# Requests for ids that are no service share one label value, so junk URLs cannot grow the series.
UNKNOWN_SERVICE = "_unknown"


class VersionMetrics:
    """Counters of one (service, model version): responses by status and a latency histogram."""

    __slots__ = ("buckets", "codes", "seconds", "service_id", "version")

    def __init__(self, service_id: str, version: str) -> None:
        self.service_id = service_id
        self.version = version
        self.codes: dict[int, int] = {}
        self.buckets = [0] * (len(BUCKETS) + 1)  # per bucket, not cumulative; last is +Inf
        self.seconds = 0.0

    def count(self, status: int, seconds: float) -> None:
        codes = self.codes
        codes[status] = codes.get(status, 0) + 1
        self.buckets[bisect_left(BUCKETS, seconds)] += 1
        self.seconds += seconds


class ServiceMetrics:
    __slots__ = ("errors", "inflight", "service_id", "versions")

    def __init__(self, service_id: str) -> None:
        self.service_id = service_id
        self.inflight = 0
        self.versions: dict[str, VersionMetrics] = {}
        self.errors: dict[str, int] = {}

    def version(self, model_version: str) -> VersionMetrics:
        vm = self.versions.get(model_version)
        if vm is None:
            vm = self.versions[model_version] = VersionMetrics(self.service_id, model_version)
        return vm

    def error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1


_services: dict[str, ServiceMetrics] = {}


def for_service(service_id: str) -> ServiceMetrics:
    sm = _services.get(service_id)
    if sm is None:
        sm = _services[service_id] = ServiceMetrics(service_id)
    return sm


_Families = tuple[CounterMetricFamily, HistogramMetricFamily, CounterMetricFamily, GaugeMetricFamily]


class _GatewayCollector(Collector):
    """Turns the counters into metric families at scrape time (possibly from another thread:
    it only takes C-level copies of dicts and lists, which the GIL makes atomic)."""

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        requests, duration, errors, inflight = self._families()
        for sm in list(_services.values()):
            sid = sm.service_id
            inflight.add_metric([sid], sm.inflight)
            for code, n in list(sm.errors.items()):
                errors.add_metric([sid, code], n)
            for vm in list(sm.versions.values()):
                for status, n in list(vm.codes.items()):
                    requests.add_metric([sid, vm.version, str(status)], n)
                cumulative, buckets = 0, []
                for le, n in zip(_LE, list(vm.buckets), strict=True):
                    cumulative += n
                    buckets.append((le, cumulative))
                duration.add_metric([sid, vm.version], buckets, vm.seconds)
        yield from (requests, duration, errors, inflight)

    @staticmethod
    def _families() -> _Families:
        return (
            CounterMetricFamily(
                "modelport_gateway_requests",
                "Prediction requests answered by the gateway, by service, model version and HTTP status.",
                labels=["service_id", "model_version", "code"],
            ),
            HistogramMetricFamily(
                "modelport_gateway_request_duration_seconds",
                "Time from request arrival to the end of the response, by service and model version.",
                labels=["service_id", "model_version"],
            ),
            CounterMetricFamily(
                "modelport_gateway_errors",
                "Errors the platform made (not the model), by service and error code.",
                labels=["service_id", "error_code"],
            ),
            GaugeMetricFamily(
                "modelport_gateway_inflight", "Requests in flight through the gateway.", labels=["service_id"]
            ),
        )


REGISTRY.register(_GatewayCollector())


# -- streams and WebSocket sessions ------------------------------------------------------------

STREAM_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
_STREAM_LE = [*(f"{b:g}" for b in STREAM_BUCKETS), "+Inf"]


class StreamMetrics:
    """Counters of one service's long-lived exchanges: event streams and WebSocket sessions."""

    __slots__ = (
        "service_id",
        "stream_buckets",
        "stream_events",
        "stream_seconds",
        "ws_buckets",
        "ws_closes",
        "ws_in",
        "ws_open",
        "ws_out",
        "ws_seconds",
    )

    def __init__(self, service_id: str) -> None:
        self.service_id = service_id
        self.stream_buckets = [0] * (len(STREAM_BUCKETS) + 1)
        self.stream_seconds = 0.0
        self.stream_events = 0
        self.ws_buckets = [0] * (len(STREAM_BUCKETS) + 1)
        self.ws_seconds = 0.0
        self.ws_closes: dict[int, int] = {}
        self.ws_in = 0
        self.ws_out = 0
        self.ws_open = 0

    def stream_ended(self, seconds: float, events: int) -> None:
        self.stream_buckets[bisect_left(STREAM_BUCKETS, seconds)] += 1
        self.stream_seconds += seconds
        self.stream_events += events

    def session_ended(self, seconds: float, close_code: int) -> None:
        self.ws_buckets[bisect_left(STREAM_BUCKETS, seconds)] += 1
        self.ws_seconds += seconds
        self.ws_closes[close_code] = self.ws_closes.get(close_code, 0) + 1


_streams: dict[str, StreamMetrics] = {}


def streams_of(service_id: str) -> StreamMetrics:
    sm = _streams.get(service_id)
    if sm is None:
        sm = _streams[service_id] = StreamMetrics(service_id)
    return sm


def _histogram(buckets: list[int]) -> list[tuple[str, int]]:
    cumulative, out = 0, []
    for le, n in zip(_STREAM_LE, list(buckets), strict=True):
        cumulative += n
        out.append((le, cumulative))
    return out


class _StreamCollector(Collector):
    """The stream and WebSocket series (same threading rules as `_GatewayCollector`)."""

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        durations, events, sessions, ws_durations, messages, ws_open = families = self._families()
        for sm in list(_streams.values()):
            sid = sm.service_id
            if sm.stream_events or any(sm.stream_buckets):
                durations.add_metric([sid], _histogram(sm.stream_buckets), sm.stream_seconds)
                events.add_metric([sid], sm.stream_events)
            if sm.ws_closes or sm.ws_open:
                for code, n in list(sm.ws_closes.items()):
                    sessions.add_metric([sid, str(code)], n)
                ws_durations.add_metric([sid], _histogram(sm.ws_buckets), sm.ws_seconds)
                messages.add_metric([sid, "in"], sm.ws_in)
                messages.add_metric([sid, "out"], sm.ws_out)
                ws_open.add_metric([sid], sm.ws_open)
        yield from families

    @staticmethod
    def _families() -> tuple[Metric, ...]:
        return (
            HistogramMetricFamily(
                "modelport_gateway_stream_duration_seconds",
                "Length of event streams (SSE, JSON lines) relayed by the gateway, from request to end.",
                labels=["service_id"],
            ),
            CounterMetricFamily(
                "modelport_gateway_stream_events",
                "Events (SSE messages, comments included; JSON lines) relayed in streams.",
                labels=["service_id"],
            ),
            CounterMetricFamily(
                "modelport_gateway_websocket_sessions",
                "WebSocket sessions relayed, by the close code the client got.",
                labels=["service_id", "close_code"],
            ),
            HistogramMetricFamily(
                "modelport_gateway_websocket_duration_seconds",
                "Length of WebSocket sessions, from accept to close.",
                labels=["service_id"],
            ),
            CounterMetricFamily(
                "modelport_gateway_websocket_messages",
                "WebSocket messages relayed: in = client to model, out = model to client.",
                labels=["service_id", "direction"],
            ),
            GaugeMetricFamily(
                "modelport_gateway_websocket_open", "WebSocket sessions open now.", labels=["service_id"]
            ),
        )


REGISTRY.register(_StreamCollector())
