"""The whole platform on PostgreSQL: deploy, predict, restart, all as on SQLite."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.conftest import EXAMPLES, make_platform
from tests.store.conftest import pg_url  # noqa: F401 - fixture

pytestmark = pytest.mark.slow


def test_platform_on_postgres(tmp_path: Path, pg_url: str) -> None:  # noqa: F811
    p = make_platform(tmp_path, MODELPORT_DATABASE_URL=pg_url)
    p.start()
    try:
        c = p.client()
        mid = c.import_model("echo", "1.0.0", "Custom", EXAMPLES / "echo")
        assert c.wait_model(mid)["model_status"] == "published"
        sid = c.create_service(
            {
                "service_name": "echo-pg",
                "infer_type": "real-time",
                "config": [
                    {
                        "model_id": mid,
                        "weight": 100,
                        "specification": "modelarts.vm.cpu.1u",
                        "instance_count": 1,
                    }
                ],
            }
        )
        assert c.wait_service(sid, timeout=60)["status"] == "running"
        assert c.predict(sid, {"pg": True}) == {"pg": True}
        p.instance_pids()
        c.close()
        p.stop()
        assert not (p.home / "modelport.db").exists()  # really on PostgreSQL
        p.start()
        c = p.client()
        assert c.wait_service(sid, timeout=60)["status"] == "running"
        assert c.predict(sid, {"again": 1}) == {"again": 1}
        p.instance_pids()
        c.close()
    finally:
        p.stop()
