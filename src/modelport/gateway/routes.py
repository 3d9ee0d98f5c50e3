"""The route table: the gateway's read-only snapshot of where each service's traffic may go.

The orchestrator builds a new `RouteTable` whenever an instance becomes ready or leaves, and
hands it to the gateway, which swaps it in atomically. The gateway never reads the store.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


@dataclass(frozen=True, slots=True)
class Endpoint:
    instance_id: str
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class VersionRoute:
    """One config of a service: a model version, its traffic weight and its ready instances."""

    config_id: str
    model_id: str
    model_name: str
    model_version: str
    weight: int
    endpoints: tuple[Endpoint, ...]


@dataclass(frozen=True, slots=True)
class ServiceRoute:
    service_id: str
    project_id: str
    status: str  # service status; only running/concerning/deploying with endpoints take traffic
    versions: tuple[VersionRoute, ...]
    max_body_bytes: int | None = None  # None: gateway default
    timeout_s: float | None = None  # None: gateway default
    auth_required: bool = True  # False: additional_properties.auth == "none" (explicit opt-in)
    qps_limit: int | None = None  # requests/s; None: gateway default
    # Instance choice: LEAST_CONNECTIONS (default), ROUND_ROBIN, SOURCE_IP, or PREFIX_AFFINITY (LLM services).
    policy: str = "LEAST_CONNECTIONS"
    kind: str = "python"  # runtime of the service's models: python | command | llm
    websocket: bool = False  # additional_properties.websocket_upgrade
    # Longest silence of a streamed response once its head went out (SSE); None: `timeout_s`.
    stream_idle_timeout_s: float | None = None


@dataclass(frozen=True)
class RouteTable:
    revision: int = 0
    services: Mapping[str, ServiceRoute] = field(default_factory=lambda: MappingProxyType({}))

    def get(self, service_id: str) -> ServiceRoute | None:
        return self.services.get(service_id)
