"""The service state machine: from the instances a service has to its status, progress and error.

One pure function, so every transition rule lives in one place and is unit-tested alone.
"""

from __future__ import annotations

from dataclasses import dataclass

# Instance states that hold (or will soon hold) a process.
LIVE = frozenset({"starting", "ready", "notReady", "crashed", "draining"})
PENDING = frozenset({"starting", "crashed", "notReady"})


@dataclass(frozen=True)
class InstanceView:
    slot: int
    revision: str
    status: str
    message: str | None = None


@dataclass(frozen=True)
class ServiceState:
    status: str
    progress: int
    error_msg: str | None


def service_state(
    current: str, desired: str, wanted: list[tuple[str, int]], instances: list[InstanceView]
) -> ServiceState:
    """Status of a service.

    `wanted` is (revision, instance_count) per config slot. A service is `running` when every slot
    has its count of ready instances of the wanted revision and nothing else is left over;
    `deploying` while instances are still on their way; `concerning` when it serves with fewer
    ready instances than wanted; `failed` when nothing is ready and nothing is pending.
    """
    live = [i for i in instances if i.status in LIVE]
    if desired == "deleted":
        return ServiceState("deleting", 0, None)
    if desired == "stopped":
        return ServiceState("stopping" if live else "stopped", 0, None)
    if desired in ("finished", "failed"):  # a batch job ended; its instances drain in the background
        return ServiceState(desired, 100 if desired == "finished" else 0, None)
    total = sum(n for _rev, n in wanted) or 1
    ready_wanted = 0
    for slot, (rev, n) in enumerate(wanted):
        ready_wanted += min(n, sum(1 for i in live if i.slot == slot and i.revision == rev and i.status == "ready"))
    leftovers = [i for i in live if i.slot >= len(wanted) or i.revision != wanted[i.slot][0] or i.status == "draining"]
    ready_any = any(i.status == "ready" for i in live)
    pending = any(i.status in PENDING for i in live)
    failures = [
        i.message
        for i in instances
        if i.status == "failed" and i.message and i.slot < len(wanted) and i.revision == wanted[i.slot][0]
    ]
    error = failures[-1] if failures else None
    progress = int(100 * ready_wanted / total)
    if ready_wanted == total and not leftovers:
        return ServiceState("running", 100, None)
    if current == "deploying" and pending:
        return ServiceState("deploying", progress, None)
    if pending and current in ("running", "concerning"):
        crashed = [i.message for i in live if i.status in ("crashed", "notReady") and i.message]
        return ServiceState("concerning", progress, crashed[-1] if crashed else error)
    if ready_any:
        return ServiceState("concerning" if failures or pending else current, progress, error)
    if pending:
        return ServiceState(current if current in ("deploying", "failed") else "concerning", progress, error)
    return ServiceState("failed", progress, error or "No instance could be started; see the events and logs.")
