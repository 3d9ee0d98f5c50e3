"""A bounded closed-loop load generator for chaos tests: N threads, each one request at a time."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import httpx


@dataclass
class Result:
    started: float
    ended: float
    status: int | None  # None: connection error
    version: str | None
    error: str | None = None


@dataclass
class Load:
    url: str
    token: str
    clients: int = 4
    max_requests: int = 20_000
    max_seconds: float = 60.0
    body: dict = field(default_factory=lambda: {"x": 1})
    results: list[Result] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        with httpx.Client(headers={"X-Auth-Token": self.token}, timeout=30, trust_env=False) as client:
            while not self._stop.is_set() and time.monotonic() < deadline:
                with self._lock:
                    if len(self.results) >= self.max_requests:
                        return
                t0 = time.monotonic()
                try:
                    resp = client.post(self.url, json=self.body)
                    res = Result(t0, time.monotonic(), resp.status_code, resp.headers.get("x-modelport-version"))
                    if resp.status_code != 200:
                        res.error = resp.text[:300]
                except httpx.HTTPError as exc:
                    res = Result(t0, time.monotonic(), None, None, repr(exc))
                with self._lock:
                    self.results.append(res)

    def start(self) -> Load:
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(self.clients)]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> list[Result]:
        self._stop.set()
        for t in self._threads:
            t.join(40)
        return self.results

    def count(self) -> int:
        with self._lock:
            return len(self.results)

    def failures(self) -> list[Result]:
        with self._lock:
            return [r for r in self.results if r.status != 200]
