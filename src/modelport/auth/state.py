"""The one place that applies auth changes in a process: the current `AuthSnapshot` and its subscribers.

The control plane calls `refresh()` after every change of users, memberships, keys or apps (and
periodically, for changes made by another control plane on the same database); a gateway-only
process calls `apply()` with the records it long-polled. Either way the new snapshot goes to the
token verifier (per-user revocation times) and to every subscriber (the gateway) at once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from modelport.auth.secrets import SecretBox
from modelport.auth.snapshot import AuthRecords, AuthSnapshot, load_records, open_records
from modelport.auth.tokens import TokenService
from modelport.store.db import Store

log = logging.getLogger("modelport.auth")

Listener = Callable[[AuthSnapshot, AuthRecords], None]


class AuthState:
    def __init__(self, tokens: TokenService, box: SecretBox, store: Store | None = None) -> None:
        self.tokens = tokens
        self._box = box
        self._store = store
        self._lock = threading.Lock()
        self._fingerprint: str | None = None
        self._revision = 0
        self.records = AuthRecords()
        self.snapshot = AuthSnapshot(roles={})  # nobody may do anything until the first refresh
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)
        listener(self.snapshot, self.records)

    def refresh(self) -> bool:
        """Rebuild from the store; True if anything changed (then subscribers got the new snapshot)."""
        assert self._store is not None, "refresh() needs a store; a gateway-only process uses apply()"
        with self._store.session() as s:
            records = load_records(s)
        return self.apply(records)

    def apply(self, records: AuthRecords) -> bool:
        with self._lock:
            fingerprint = records.fingerprint()
            if fingerprint == self._fingerprint:
                return False
            self._revision += 1
            snapshot = open_records(records, self._box, self._revision)
            self.tokens.set_valid_after(dict(snapshot.valid_after))
            self._fingerprint, self.records, self.snapshot = fingerprint, records, snapshot
            for listener in self._listeners:
                try:
                    listener(snapshot, records)
                except Exception:
                    log.exception("auth snapshot subscriber failed")
            return True
