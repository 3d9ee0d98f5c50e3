"""Batch knobs, read from `MODELPORT_*` environment variables like the platform's own settings."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class BatchSettings(BaseSettings):
    """Defaults are documented in the README (section Configuration, batch services)."""

    model_config = SettingsConfigDict(env_prefix="MODELPORT_", extra="ignore")

    # S3-compatible object store for s3:// and obs:// paths; None = AWS. Credentials come from the
    # usual AWS_* environment variables (or ~/.aws), as with any boto client.
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    # How often the runner looks for batch services to run and for their ready instances.
    batch_tick_s: float = 0.2
    # Records in flight per ready instance: enough to hide the round trip, few enough to be fair.
    batch_inflight_per_instance: int = 4
    # Extra attempts for a record whose call failed transiently (connection error, 502/503/504, timeout).
    batch_retries: int = 3
    batch_retry_backoff_s: float = 0.5
    batch_request_timeout_s: float = 120.0
    # Results are checkpointed at least this often (and whenever this many are waiting).
    batch_flush_interval_s: float = 0.25
    batch_flush_records: int = 1000
    # Records read ahead of the instances: bounds memory (file inputs are read ahead in smaller groups).
    batch_read_ahead: int = 2000
