"""Login throttling: per (user name, client address), a lock-out that doubles with each further failure.

After `max_failures` failed logins in a row, the pair is locked for 1 s, then 2 s, 4 s, … up to
`max_lockout_s`; a success clears it. A locked pair is refused before its password is checked, so
guessing costs the guesser time, not the platform CPU. State is in memory (one control plane).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass


@dataclass
class _Entry:
    failures: int = 0
    locked_until: float = 0.0
    last: float = 0.0


class LoginThrottle:
    def __init__(self, max_failures: int = 5, max_lockout_s: float = 300.0, forget_after_s: float = 3600.0) -> None:
        self.max_failures = max_failures
        self.max_lockout_s = max_lockout_s
        self.forget_after_s = forget_after_s
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._lock = threading.Lock()

    def retry_after(self, user: str, address: str, now: float | None = None) -> int:
        """Seconds the pair must still wait (0: it may try now)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            entry = self._entries.get((user, address))
            if entry is None or entry.locked_until <= now:
                return 0
            return max(1, math.ceil(entry.locked_until - now))

    def failed(self, user: str, address: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._forget_old(now)
            entry = self._entries.setdefault((user, address), _Entry())
            entry.failures += 1
            entry.last = now
            over = entry.failures - self.max_failures
            if over >= 0:
                entry.locked_until = now + min(self.max_lockout_s, 2.0**over)

    def succeeded(self, user: str, address: str) -> None:
        with self._lock:
            self._entries.pop((user, address), None)

    def _forget_old(self, now: float) -> None:
        if len(self._entries) < 10_000:
            return
        for key in [k for k, e in self._entries.items() if now - e.last > self.forget_after_s]:
            del self._entries[key]
