"""Settings: every knob of the platform, read once from `MODELPORT_*` environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Platform configuration. Defaults are documented in the README (section Configuration)."""

    model_config = SettingsConfigDict(env_prefix="MODELPORT_", extra="ignore")

    home: Path = Field(default_factory=lambda: Path.home() / ".modelport")
    host: str = "127.0.0.1"
    port: int = 8000
    database_url: str | None = None
    # Address instances bind to and the gateway connects to.
    instance_host: str = "127.0.0.1"
    # How often the orchestrator reconciles desired and actual state.
    reconcile_interval_s: float = 0.5
    # Instance log files: size before rotation and how many rotated files to keep.
    log_max_bytes: int = 10 * 1024 * 1024
    log_backups: int = 3
    # Logs (and rows) of instances that are gone stay readable this long.
    log_retention_hours: float = 72.0
    # Crash restarts: first delay, cap, and how many restarts in a row before giving up.
    restart_backoff_s: float = 1.0
    restart_backoff_max_s: float = 60.0
    restart_limit: int = 10
    # Default per-instance deploy timeout (spec console default: 20 min).
    deploy_timeout_s: int = 1200
    token_ttl_s: int = 24 * 3600
    # Gateway defaults (spec §5.2).
    max_body_bytes: int = 12 * 1024 * 1024
    request_timeout_s: float = 40.0
    # Per-service QPS limit (token bucket; burst = ceil(qps * qps_burst_fraction), at least 1).
    qps_limit: int = 100
    qps_burst_fraction: float = 0.1
    # WebSocket sessions: client messages/s one session may send before it is closed with 1008
    # (0 = no limit; the QPS limit counts handshakes only), in bursts of ws_message_burst (0 = 1 s worth).
    ws_message_rate: float = 0.0
    ws_message_burst: int = 0
    # Shared QPS buckets for several gateway processes; None: exact in-process buckets.
    redis_url: str | None = None
    redis_prefix: str = "modelport:"
    # Management API: largest request body accepted (JSON).
    api_max_body_bytes: int = 1024 * 1024
    # Login throttling: failures per user+address before a lock-out, which doubles up to the cap.
    login_max_failures: int = 5
    login_lockout_max_s: float = 300.0
    # Gateway-only processes (`modelport gateway`): the control plane to follow, long-poll timeout.
    control_url: str | None = None
    snapshot_poll_s: float = 25.0
    # Node capacity offered as flavors; None = detected from the machine.
    cpu_capacity: float | None = None
    memory_capacity_mb: int | None = None

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'modelport.db'}"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def credentials_file(self) -> Path:
        return self.home / "credentials.json"

    @property
    def secret_key_file(self) -> Path:
        return self.home / "secret.key"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
