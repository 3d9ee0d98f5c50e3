"""The platform restarts: models and services survive, running services come back by themselves."""

from __future__ import annotations

import pytest
from tests.conftest import EXAMPLES, PlatformProc, pid_alive, wait_until

pytestmark = pytest.mark.slow


def test_restart_brings_services_back(platform: PlatformProc) -> None:
    c = platform.client()
    mid = c.import_model("echo", "1.0.0", "Custom", EXAMPLES / "echo")
    assert c.wait_model(mid)["model_status"] == "published"
    sid = c.create_service(
        {
            "service_name": "echo",
            "infer_type": "real-time",
            "config": [{"model_id": mid, "weight": 100, "specification": "modelarts.vm.cpu.1u", "instance_count": 2}],
        }
    )
    assert c.wait_service(sid, timeout=60)["status"] == "running"
    pids = platform.instance_pids()
    assert len(pids) == 2
    c.close()
    assert platform.stop() in (0, 130)  # 130: exit status of a clean Ctrl-C
    # a clean stop leaves no instance behind
    wait_until(lambda: not any(pid_alive(pid) for pid in pids), 15, what="instances to exit with the platform")
    platform.start()
    c = platform.client()
    svc = c.wait_service(sid, timeout=60)
    assert svc["status"] == "running"
    assert c.get_model(mid)["model_status"] == "published"
    assert c.predict(sid, {"x": 1}) == {"x": 1}
    assert len(platform.instance_pids()) == 2
    c.close()
