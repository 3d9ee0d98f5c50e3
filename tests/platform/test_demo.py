"""`modelport up --demo`: the main job of the quick start, end to end, including its curl command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.slow


def test_demo_deploys_predicts_and_prints_a_working_curl(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "MODELPORT_HOME": str(tmp_path / "home"), "COLUMNS": "120"}
    out = tmp_path / "demo.out"
    with out.open("wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "modelport.cli.main", "up", "--demo", "--port", str(port)],
            cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while "Try it:" not in out.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, out.read_text()
            time.sleep(0.2)
        time.sleep(0.3)
        text = out.read_text()
        assert "Try it:" in text, text
        assert "Answered by: 1.0.0:" in text and "Predictions through the gateway" in text
        assert f"http://127.0.0.1:{port}" in text and "credentials.json" in text
        curl = text.split("Try it:\n", 1)[1].splitlines()[0]
        assert curl.startswith("curl ") and "$(.venv/bin/modelport token)" in curl
        if not (ROOT / ".venv" / "bin" / "modelport").exists():
            curl = curl.replace(".venv/bin/modelport", f"{sys.executable} -m modelport.cli.main")
        answer = subprocess.run(["bash", "-c", curl], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        body = json.loads(answer.stdout)
        assert body["predicted_label"] == "0", answer  # the curl sends the data set's first image, a 0
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
