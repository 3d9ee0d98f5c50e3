"""Batch fixtures: a local S3 server (moto, 127.0.0.1), a platform that knows it, and output checks."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import EXAMPLES, PlatformProc, _reap, free_port, make_platform
from tests.store.conftest import db_url, pg_url  # noqa: F401  (SQLite and PostgreSQL stores)

MODELS = Path(__file__).parent / "models"
FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@dataclass
class S3:
    endpoint: str
    fs: Any  # s3fs.S3FileSystem on the local server

    @property
    def env(self) -> dict[str, str]:
        return {"MODELPORT_S3_ENDPOINT_URL": self.endpoint, **FAKE_AWS}

    def bucket(self, name: str) -> str:
        if not self.fs.exists(name):
            self.fs.call_s3("create_bucket", Bucket=name)
        return name


@pytest.fixture(scope="session")
def s3() -> Iterator[S3]:
    import s3fs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    fs = s3fs.S3FileSystem(
        key="testing",
        secret="testing",
        client_kwargs={"endpoint_url": endpoint, "region_name": "us-east-1"},
        use_listings_cache=False,
        skip_instance_cache=True,
    )
    try:
        yield S3(endpoint, fs)
    finally:
        server.stop()


@dataclass
class BatchPlatform:
    proc: PlatformProc
    client: Any
    echo: str
    picky: str

    def run(self, name: str, timeout: float = 90, **cfg: Any) -> dict[str, Any]:
        """Create a batch service and wait until it is finished (or failed)."""
        sid = self.create(name, **cfg)
        return self.client.wait_service(sid, ("finished", "failed"), timeout)

    def create(self, name: str, model: str | None = None, instances: int = 1, **cfg: Any) -> str:
        body = {
            "service_name": name,
            "infer_type": "batch",
            "config": [
                {
                    "model_id": model or self.picky,
                    "specification": "modelarts.vm.cpu.1u",
                    "instance_count": instances,
                    "req_uri": "/",
                    **cfg,
                }
            ],
        }
        return self.client.create_service(body)


def import_models(c: Any) -> tuple[str, str]:
    echo = c.import_model("echo", "1.0.0", "Custom", EXAMPLES / "echo")
    picky = c.import_model("picky", "1.0.0", "Custom", MODELS / "picky")
    for mid in (echo, picky):
        assert c.wait_model(mid)["model_status"] == "published"
    return echo, picky


@pytest.fixture(scope="module")
def batch_platform(tmp_path_factory: pytest.TempPathFactory, s3: S3) -> Iterator[BatchPlatform]:
    p = make_platform(tmp_path_factory.mktemp("batch"), **s3.env)
    p.start()
    c = p.client()
    try:
        yield BatchPlatform(p, c, *import_models(c))
    finally:
        c.close()
        _reap(p)


def manifest_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def assert_exactly_once(lines: list[dict[str, Any]], expected: set[tuple[str, int]]) -> None:
    """Every expected (source, row) appears once in the manifest, and nothing else does."""
    keys = Counter((e["source"], e.get("row", e.get("line", -1))) for e in lines)
    doubled = {k: n for k, n in keys.items() if n > 1}
    assert not doubled, f"records in the manifest more than once: {list(doubled.items())[:5]}"
    missing = expected - set(keys)
    extra = set(keys) - expected
    assert not missing and not extra, f"missing {sorted(missing)[:5]} ({len(missing)}), extra {sorted(extra)[:5]}"
