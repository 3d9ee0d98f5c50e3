"""Exactly once across crashes: the platform is killed (-9) mid-run, an instance dies with it, and
after a restart both jobs finish with every input in the manifest exactly once."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from tests.batch.conftest import assert_exactly_once, import_models, manifest_lines
from tests.batch.test_batch_service import RULE
from tests.conftest import _reap, make_platform, pid_alive, wait_until

pytestmark = pytest.mark.slow

ROWS = 3000
FILES = 300


def test_kill_platform_mid_run_then_resume(tmp_path: Path) -> None:
    src_csv, src_files, dest = tmp_path / "csv", tmp_path / "files", tmp_path / "out"
    src_csv.mkdir()
    src_files.mkdir()
    (src_csv / "rows.csv").write_text("".join(f"{i},{i},r{i}\n" for i in range(ROWS)))
    for i in range(FILES):
        (src_files / f"f{i:04d}.txt").write_text(f"file {i}")
    p = make_platform(tmp_path)
    p.start()
    try:
        c = p.client()
        _echo, picky = import_models(c)
        common = {"model_id": picky, "specification": "modelarts.vm.cpu.1u", "req_uri": "/"}
        slow = {"PICKY_DELAY_S": "0.02"}
        csv_sid = c.create_service(
            {
                "service_name": "rows",
                "infer_type": "batch",
                "config": [
                    {
                        **common,
                        "instance_count": 2,
                        "envs": slow,
                        "src_path": str(src_csv),
                        "dest_path": str(dest / "rows"),
                        "mapping_type": "csv",
                        "mapping_rule": RULE,
                    }
                ],
            }
        )
        file_sid = c.create_service(
            {
                "service_name": "files",
                "infer_type": "batch",
                "config": [
                    {
                        **common,
                        "instance_count": 1,
                        "envs": slow,
                        "src_path": str(src_files),
                        "dest_path": str(dest / "files"),
                        "mapping_type": "file",
                    }
                ],
            }
        )

        def processed(sid: str) -> int:
            return (c.get_service(sid).get("batch_progress") or {}).get("processed") or 0

        wait_until(lambda: processed(csv_sid) >= 500 and processed(file_sid) >= 40, 60, what="progress")
        pids = p.instance_pids()
        c.close()
        p.kill9()
        os.kill(pids[0], signal.SIGKILL)  # an instance dies too: the restarted platform replaces it
        wait_until(lambda: not pid_alive(pids[0]), 10, what="the killed instance to exit")

        p.start()
        c = p.client()
        for sid in (csv_sid, file_sid):
            svc = c.wait_service(sid, ("finished", "failed"), 120)
            assert svc["status"] == "finished", svc
            bp = svc["batch_progress"]
            assert bp["failed"] == 0 and bp["succeeded"] == bp["total"], bp

        rows = manifest_lines((dest / "rows" / f"infer-result-{csv_sid}.manifest").read_text())
        assert_exactly_once(rows, {(str(src_csv / "rows.csv"), i) for i in range(ROWS)})
        results = (dest / "rows/infer-result/rows.csv_result.txt").read_text().splitlines()
        assert [json.loads(r)["data"]["req_data"][0]["id"] for r in results] == list(range(ROWS))

        files = manifest_lines((dest / "files" / f"infer-result-{file_sid}.manifest").read_text())
        assert_exactly_once(files, {(str(src_files / f"f{i:04d}.txt"), -1) for i in range(FILES)})
        assert all(e["result"] == "SUCCESSFUL" for e in files)
        for i in (0, FILES // 2, FILES - 1):
            answer = json.loads((dest / f"files/infer-result/f{i:04d}.txt_result.txt").read_text())
            assert answer["doc"][f"f{i:04d}.txt"]["text"] == f"file {i}"
        c.close()
    finally:
        _reap(p)
