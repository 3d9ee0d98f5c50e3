"""Balance: which version (smooth weighted round-robin) and instance (least outstanding) serve a request.

`Balancer.update` turns each pushed `RouteTable` into per-service plans once, so a pick on the hot
path is a few list operations. A service with policy `PREFIX_AFFINITY` (LLM services) picks the
instance by prompt prefix instead, within a load bound (`prefix.py`), when the request has a
prompt chain; its record of recent decisions survives table updates. Invariants:
- only versions with weight > 0 and at least one routable instance take part; their weights are
  used as they are (so they renormalise over whoever takes part);
- a version's round-robin state survives a table update as long as the set of taking-part
  versions and their weights is unchanged (an instance joining or leaving does not reset it);
- an instance marked down is never picked until a table arrives that no longer lists it;
- `load[instance_id]` counts the requests the gateway has outstanding on that instance.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from modelport.gateway.prefix import Affinity
from modelport.gateway.routes import RouteTable, ServiceRoute

# Service statuses that take traffic; "deploying" does too once some instance is ready.
_SERVING = frozenset({"running", "concerning"})
PREFIX_AFFINITY = "PREFIX_AFFINITY"


class SmoothWRR:
    """nginx's smooth weighted round-robin.

    Invariant: sum(current) == 0 after every pick, so starting from zero every run of
    sum(weights) consecutive picks holds exactly weights[i] picks of item i, evenly interleaved.
    """

    __slots__ = ("current", "total", "weights")

    def __init__(self, weights: Sequence[int]) -> None:
        if not weights or any(w <= 0 for w in weights):
            raise ValueError("weights must be positive")
        self.weights = tuple(weights)
        self.total = sum(self.weights)
        self.current = [0] * len(self.weights)

    def pick(self) -> int:
        current = self.current
        best = 0
        best_value = None
        for i, weight in enumerate(self.weights):
            value = current[i] + weight
            current[i] = value
            if best_value is None or value > best_value:
                best, best_value = i, value
        current[best] -= self.total
        return best


class Target:
    """One routable instance as the proxy needs it, with its header values encoded once."""

    __slots__ = ("authority", "instance_b", "instance_id", "key", "model_version", "version_b")

    def __init__(self, instance_id: str, host: str, port: int, model_version: str) -> None:
        self.instance_id = instance_id
        self.key = (host, port)
        self.authority = f"{host}:{port}".encode()
        self.instance_b = instance_id.encode()
        self.model_version = model_version
        self.version_b = model_version.encode()


class VersionPlan:
    """A version's routable instances and its round-robin cursor for breaking load ties."""

    __slots__ = ("_next", "config_id", "model_version", "targets", "weight")

    def __init__(self, config_id: str, model_version: str, weight: int, targets: list[Target]) -> None:
        self.config_id = config_id
        self.model_version = model_version
        self.weight = weight
        self.targets = targets
        self._next = 0

    def pick(self, load: dict[str, int], exclude: str | None, avoid: dict[str, float] | None) -> Target | None:
        """The least loaded instance; ties go round-robin. Suspects (`avoid`) only as a last resort."""
        targets = self.targets
        n = len(targets)
        if n == 1 and not avoid:
            return None if targets[0].instance_id == exclude else targets[0]
        start = self._next
        self._next = start + 1 if start + 1 < n else 0
        best: Target | None = None
        best_load = 1 << 62
        fallback: Target | None = None
        now = time.monotonic() if avoid else 0.0
        for i in range(n):
            j = start + i
            target = targets[j - n if j >= n else j]
            if target.instance_id == exclude:
                continue
            if avoid and avoid.get(target.instance_id, 0.0) > now:
                fallback = fallback or target
                continue
            outstanding = load.get(target.instance_id, 0)
            if outstanding < best_load:
                best, best_load = target, outstanding
                if outstanding == 0:
                    break
        return best or fallback


class ServicePlan:
    """A service as the gateway routes it: limits, whether it serves, and its versions to pick from."""

    __slots__ = ("affinity", "route", "serving", "versions", "wrr")

    def __init__(self, route: ServiceRoute, versions: list[VersionPlan], wrr: SmoothWRR | None) -> None:
        self.route = route
        self.versions = versions  # taking part, in route order
        self.wrr = wrr
        self.affinity: Affinity | None = None  # set for PREFIX_AFFINITY services
        has_endpoints = any(v.endpoints for v in route.versions)
        self.serving = route.status in _SERVING or (route.status == "deploying" and has_endpoints)

    @property
    def shape(self) -> tuple[tuple[str, int], ...]:
        return tuple((v.config_id, v.weight) for v in self.versions)


class Balancer:
    """Per-service plans built from the pushed route table, plus instance load and health marks."""

    def __init__(self) -> None:
        self.table = RouteTable()
        self.plans: dict[str, ServicePlan] = {}
        self.load: dict[str, int] = {}
        self._down: set[str] = set()
        self._suspect: dict[str, float] = {}

    # -- control side ----------------------------------------------------------------------

    def update(self, table: RouteTable) -> None:
        listed = {e.instance_id for s in table.services.values() for v in s.versions for e in v.endpoints}
        self._down &= listed  # a down mark lasts until a table no longer lists the instance
        old = self.plans
        self.plans = {sid: self._plan(route, old.get(sid)) for sid, route in table.services.items()}
        self.table = table

    def mark_down(self, instance_id: str) -> None:
        self._down.add(instance_id)
        affected = [
            sid
            for sid, route in self.table.services.items()
            if any(e.instance_id == instance_id for v in route.versions for e in v.endpoints)
        ]
        if affected:
            plans = dict(self.plans)
            for sid in affected:
                plans[sid] = self._plan(self.table.services[sid], plans.get(sid))
            self.plans = plans

    def suspect(self, instance_id: str, seconds: float = 2.0) -> None:
        """Prefer other instances for a while (a connection to this one just failed)."""
        self._suspect[instance_id] = time.monotonic() + seconds

    def keys(self) -> set[tuple[str, int]]:
        return {t.key for p in self.plans.values() for v in p.versions for t in v.targets}

    def keys_of(self, instance_id: str) -> set[tuple[str, int]]:
        return {
            (e.host, e.port)
            for s in self.table.services.values()
            for v in s.versions
            for e in v.endpoints
            if e.instance_id == instance_id
        }

    def _plan(self, route: ServiceRoute, old: ServicePlan | None) -> ServicePlan:
        versions = []
        for v in route.versions:
            targets = [
                Target(e.instance_id, e.host, e.port, v.model_version)
                for e in v.endpoints
                if e.instance_id not in self._down
            ]
            if v.weight > 0 and targets:
                versions.append(VersionPlan(v.config_id, v.model_version, v.weight, targets))
        plan = ServicePlan(route, versions, None)
        if route.policy == PREFIX_AFFINITY:
            plan.affinity = old.affinity if old is not None and old.affinity is not None else Affinity()
        if old is not None and old.shape == plan.shape:
            plan.wrr = old.wrr
            for new_v, old_v in zip(versions, old.versions, strict=True):
                new_v._next = old_v._next % len(new_v.targets)
        elif versions:
            plan.wrr = SmoothWRR([v.weight for v in versions])
        return plan

    # -- hot path ----------------------------------------------------------------------------

    def pick(self, plan: ServicePlan, exclude: str | None = None, chain: list[bytes] | None = None) -> Target | None:
        """An instance for one request: version by weight, then instance by load (or prompt prefix).

        With `exclude` (a retry after that instance failed) the same version is tried first,
        then the other versions in order. `chain`: the request's prompt hash chain (`prefix.py`),
        used when the service routes by prefix affinity.
        """
        versions = plan.versions
        if not versions:
            return None
        avoid = self._suspect or None
        if avoid is not None:
            self._expire_suspects()
            avoid = self._suspect or None
        version = versions[plan.wrr.pick()] if len(versions) > 1 else versions[0]  # type: ignore[union-attr]
        affinity = plan.affinity if chain else None
        if affinity is not None:
            target = self._pick_affine(affinity, version, chain, exclude, avoid)  # type: ignore[arg-type]
        else:
            target = version.pick(self.load, exclude, avoid)
        if target is None and exclude is not None:
            for other in versions:
                if other is not version:
                    target = other.pick(self.load, exclude, avoid)
                    if target is not None:
                        break
        return target

    def _pick_affine(
        self,
        affinity: Affinity,
        version: VersionPlan,
        chain: list[bytes],
        exclude: str | None,
        avoid: dict[str, float] | None,
    ) -> Target | None:
        """The prefix-affine instance of `version` within the load bound, else its least outstanding."""
        targets = version.targets
        if exclude is not None or avoid:
            now = time.monotonic()
            targets = [
                t for t in targets if t.instance_id != exclude and not (avoid and avoid.get(t.instance_id, 0.0) > now)
            ]
        load = self.load
        return affinity.pick(chain, targets, load, lambda: version.pick(load, exclude, avoid))  # type: ignore[return-value]

    def enter(self, target: Target) -> None:
        load = self.load
        load[target.instance_id] = load.get(target.instance_id, 0) + 1

    def leave(self, target: Target) -> None:
        load = self.load
        left = load[target.instance_id] - 1
        if left:
            load[target.instance_id] = left
        else:
            del load[target.instance_id]

    def _expire_suspects(self) -> None:
        now = time.monotonic()
        for iid in [i for i, until in self._suspect.items() if until <= now]:
            del self._suspect[iid]
