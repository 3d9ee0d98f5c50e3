"""Batch services end to end on a real platform: file, csv and manifest modes on local paths and S3,
bad input failing alone, validation before anything is created, stop/resume, delete, CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tests.batch.conftest import S3, BatchPlatform, assert_exactly_once, manifest_lines
from tests.conftest import pid_alive, wait_until

from modelport.client import ApiError

pytestmark = pytest.mark.slow

# picky's JSON API, as a mapping_rule: {"data": {"req_data": [{"id": <int>, "x": <number>, "tag": <str>}]}}
RULE = {
    "type": "object",
    "properties": {
        "data": {
            "type": "object",
            "properties": {
                "req_data": {
                    "type": "array",
                    "items": [
                        {
                            "type": "object",
                            "properties": {
                                "id": {"type": "integer", "index": 0},
                                "x": {"type": "number", "index": 1},
                                "tag": {"type": "string", "index": 2},
                                "unused": {"type": "string", "index": -1},
                            },
                        }
                    ],
                }
            },
        }
    },
}


def _manifest(dest: Path, sid: str) -> list[dict[str, Any]]:
    return manifest_lines((dest / f"infer-result-{sid}.manifest").read_text())


def _events(c: Any, sid: str) -> list[str]:
    return [e["event_info"] for e in c.events(sid, order="asc")["events"]]


def _csv(path: Path, rows: int, bad: dict[int, str] | None = None) -> None:
    lines = [f"{i},{i / 2},t{i}" for i in range(rows)]
    for i, line in (bad or {}).items():
        lines[i] = line
    path.write_text("\n".join(lines) + "\n")


def test_file_mode_local(batch_platform: BatchPlatform, tmp_path: Path) -> None:
    src, dest = tmp_path / "in", tmp_path / "out"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha")
    (src / "sub" / "a.txt").write_text("alpha two")  # same name, other directory: its own result
    (src / "b.bin").write_bytes(bytes(range(256)))
    (src / "poison.txt").write_text("this one is poison")  # the model fails on it
    svc = batch_platform.run("files-local", src_path=str(src), dest_path=str(dest), mapping_type="file")
    assert svc["status"] == "finished", svc
    bp = svc["batch_progress"]
    assert (bp["total"], bp["succeeded"], bp["failed"]) == (4, 3, 1), bp
    assert svc["progress"] == 100 and svc["start_time"] and svc["finished_time"] >= svc["start_time"]
    lines = _manifest(dest, svc["service_id"])
    inputs = (src / "a.txt", src / "sub/a.txt", src / "b.bin", src / "poison.txt")
    assert_exactly_once(lines, {(str(p), -1) for p in inputs})
    by_source = {e["source"]: e for e in lines}
    bad = by_source[str(src / "poison.txt")]
    assert bad["result"] == "FAILED" and "poisoned file" in bad["error_message"] and "500" in bad["error_message"]
    ok = by_source[str(src / "sub/a.txt")]
    assert ok["result"] == "SUCCESSFUL" and ok["inference-loc"] == str(dest / "infer-result/sub/a.txt_result.txt")
    # The file went up in the API's file field ("doc", from the model's apis), under its own name.
    assert json.loads((dest / "infer-result/sub/a.txt_result.txt").read_text()) == {
        "doc": {"a.txt": {"bytes": 9, "text": "alpha two"}}
    }
    assert json.loads((dest / "infer-result/b.bin_result.txt").read_text())["doc"]["b.bin"]["bytes"] == 256
    assert not (dest / "infer-result/poison.txt_result.txt").exists()
    events = _events(batch_platform.client, svc["service_id"])
    assert any("Batch job finished: 3 succeeded, 1 failed" in e for e in events), events
    # The job is over: its instance is stopped, and the service cannot be started again.
    wait_until(
        lambda: not batch_platform.client.get_service(svc["service_id"])["config"][0]["instances"],
        20,
        what="instances of the finished job to stop",
    )
    with pytest.raises(ApiError) as err:
        batch_platform.client.update_service(svc["service_id"], {"status": "running"})
    assert err.value.error_code == "ModelArts.3519"


def test_csv_mode_local(batch_platform: BatchPlatform, tmp_path: Path) -> None:
    src, dest = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    _csv(src / "train.csv", 300, bad={7: "7,not-a-number,t7", 9: "9,4.5,poison", 11: "11,5.5"})
    # BOM, CRLF line ends, and a quoted field with a comma and a line break in it
    (src / "small.csv").write_bytes('\ufeff1,0.5,"a, b"\r\n2,1.5,"two\nlines"\r\n'.encode())
    (src / "readme.md").write_text("not csv")
    urls = {"src_path": f"file://{src}", "dest_path": f"file://{dest}"}
    svc = batch_platform.run("csv-local", instances=2, mapping_type="csv", mapping_rule=RULE, **urls)
    assert svc["status"] == "finished", svc
    bp = svc["batch_progress"]
    assert (bp["total"], bp["succeeded"], bp["failed"]) == (303, 299, 4), bp
    lines = _manifest(dest, svc["service_id"])
    train, small, readme = (f"file://{src / n}" for n in ("train.csv", "small.csv", "readme.md"))
    assert_exactly_once(lines, {(train, i) for i in range(300)} | {(small, 0), (small, 1), (readme, -1)})
    errors = {(e["source"], e.get("row", -1)): e.get("error_message") for e in lines if e["result"] == "FAILED"}
    assert "'not-a-number' is not a valid number for data.req_data[0].x" in errors[(train, 7)]
    assert "poisoned record" in errors[(train, 9)]
    assert "row has 2 column(s)" in errors[(train, 11)]
    assert "not a .csv file" in errors[(readme, -1)]
    # One result line per row, in row order; failed rows keep their line with the reason.
    results = (dest / "infer-result/train.csv_result.txt").read_text().splitlines()
    assert len(results) == 300
    assert json.loads(results[42]) == {"data": {"req_data": [{"id": 42, "x": 21.0, "tag": "t42"}]}}
    assert "error_message" in json.loads(results[7])
    small_results = [json.loads(x) for x in (dest / "infer-result/small.csv_result.txt").read_text().splitlines()]
    assert [r["data"]["req_data"][0]["tag"] for r in small_results] == ["a, b", "two\nlines"]
    entry = next(e for e in lines if e["source"] == train and e["row"] == 42)
    assert entry["inference-loc"] == f"file://{dest}/infer-result/train.csv_result.txt"


def test_manifest_mode_local(batch_platform: BatchPlatform, tmp_path: Path) -> None:
    data, dest = tmp_path / "data", tmp_path / "out"
    (data / "imgs").mkdir(parents=True)
    (data / "imgs" / "one.txt").write_text("1")
    (data / "imgs" / "two.txt").write_text("22")
    manifest = tmp_path / "input.manifest"
    manifest.write_text(
        "\n".join(
            [
                json.dumps({"source": str(data / "imgs/one.txt")}),
                json.dumps({"source": f"file://{data}/imgs/two.txt"}),
                json.dumps({"source": str(data / "imgs/one.txt")}),  # listed twice: processed once
                json.dumps({"source": str(data / "missing.txt")}),
                json.dumps({"source": str(data / "imgs")}),  # a directory, not a file
                "not json",
                json.dumps({"source": "ftp://host/x"}),
            ]
        )
        + "\n"
    )
    svc = batch_platform.run(
        "manifest-local", src_path=str(manifest), src_type="ManifestFile", dest_path=str(dest), mapping_type="file"
    )
    assert svc["status"] == "finished", svc
    lines = _manifest(dest, svc["service_id"])
    one, two = str(data / "imgs/one.txt"), f"file://{data}/imgs/two.txt"
    expected = {(one, -1), (two, -1), (str(data / "missing.txt"), -1), (str(data / "imgs"), -1)}
    expected |= {(str(manifest), 6), ("ftp://host/x", -1)}
    assert_exactly_once(lines, expected)
    status = {(e["source"], e.get("line", -1)): (e["result"], e.get("error_message") or "") for e in lines}
    assert status[(one, -1)][0] == status[(two, -1)][0] == "SUCCESSFUL"
    assert "no such file" in status[(str(data / "missing.txt"), -1)][1]
    assert "directory" in status[(str(data / "imgs"), -1)][1]
    assert "manifest line 6" in status[(str(manifest), 6)][1]
    assert "ftp:// is not supported" in status[("ftp://host/x", -1)][1]
    # Results are named by the path below the manifest's directory.
    assert json.loads((dest / "infer-result/data/imgs/two.txt_result.txt").read_text())["doc"]["two.txt"]["bytes"] == 2


def test_missing_src_path_fails_its_record(batch_platform: BatchPlatform, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    svc = batch_platform.run("no-src", src_path=str(tmp_path / "nope"), dest_path=str(dest), mapping_type="file")
    assert svc["status"] == "finished", svc
    (line,) = _manifest(dest, svc["service_id"])
    assert line["result"] == "FAILED" and "has no input files" in line["error_message"]


def test_all_modes_on_s3(batch_platform: BatchPlatform, s3: S3) -> None:
    bucket = s3.bucket("batch-data")
    s3.fs.pipe(
        {
            f"{bucket}/files/a.txt": b"alpha",
            f"{bucket}/files/deep/b.txt": b"beta",
            f"{bucket}/files/poison.txt": b"poison",
            f"{bucket}/csv/train.csv": "".join(f"{i},{i},t{i}\n" for i in range(200)).encode(),
            f"{bucket}/list/in.manifest": "".join(
                json.dumps({"source": f"s3://{bucket}/files/{n}"}) + "\n" for n in ("a.txt", "deep/b.txt", "gone.txt")
            ).encode(),
        }
    )
    c = batch_platform.client
    sids = {
        "file": batch_platform.create(
            "s3-files", src_path=f"s3://{bucket}/files", dest_path=f"s3://{bucket}/out-file", mapping_type="file"
        ),
        "csv": batch_platform.create(
            "s3-csv",
            src_path=f"s3://{bucket}/csv",
            dest_path=f"s3://{bucket}/out-csv/",
            mapping_type="csv",
            mapping_rule=RULE,
        ),
        "manifest": batch_platform.create(
            "s3-manifest",
            src_path=f"s3://{bucket}/list/in.manifest",
            src_type="ManifestFile",
            dest_path=f"s3://{bucket}/out-manifest",
            mapping_type="file",
        ),
    }
    for sid in sids.values():
        assert c.wait_service(sid, ("finished", "failed"), 90)["status"] == "finished"

    def manifest(kind: str) -> list[dict[str, Any]]:
        return manifest_lines(s3.fs.cat(f"{bucket}/out-{kind}/infer-result-{sids[kind]}.manifest").decode())

    files = manifest("file")
    assert_exactly_once(files, {(f"s3://{bucket}/files/{n}", -1) for n in ("a.txt", "deep/b.txt", "poison.txt")})
    assert {e["source"].rsplit("/", 1)[1]: e["result"] for e in files} == {
        "a.txt": "SUCCESSFUL",
        "b.txt": "SUCCESSFUL",
        "poison.txt": "FAILED",
    }
    loc = next(e["inference-loc"] for e in files if e["source"].endswith("deep/b.txt"))
    assert loc == f"s3://{bucket}/out-file/infer-result/deep/b.txt_result.txt"
    assert json.loads(s3.fs.cat(loc))["doc"]["b.txt"]["text"] == "beta"

    rows = manifest("csv")
    assert_exactly_once(rows, {(f"s3://{bucket}/csv/train.csv", i) for i in range(200)})
    results = s3.fs.cat(f"{bucket}/out-csv/infer-result/train.csv_result.txt").decode().splitlines()
    assert [json.loads(r)["data"]["req_data"][0]["id"] for r in results] == list(range(200))

    listed = manifest("manifest")
    assert [e["result"] for e in listed] == ["SUCCESSFUL", "SUCCESSFUL", "FAILED"]
    # Sources outside the manifest's directory are named by their whole path (bucket included).
    assert s3.fs.exists(f"{bucket}/out-manifest/infer-result/{bucket}/files/deep/b.txt_result.txt")


@pytest.mark.parametrize(
    ("cfg", "code", "hint"),
    [
        ({"dest_path": "s3://no-such-bucket/out"}, "ModelArts.3551", "no-such-bucket"),
        ({"dest_path": "{file}/out"}, "ModelArts.3567", "cannot be written"),
        ({"dest_path": "ftp://host/out"}, "ModelArts.3572", "ftp://"),
        ({"dest_path": "relative/out"}, "ModelArts.3572", "relative path"),
        ({"req_uri": None}, "ModelArts.3610", "req_uri"),
        ({"mapping_type": "csv"}, "ModelArts.3610", "mapping_rule"),
        ({"mapping_type": "csv", "mapping_rule": {"type": "object", "properties": {}}}, "ModelArts.0101", "maps no"),
        ({"req_uri": "/nope"}, "ModelArts.0101", "not an API of the model"),
        ({"dest_path": "{src}/inside"}, "ModelArts.0101", "inside src_path"),
    ],
)
def test_bad_config_is_refused_before_anything_is_created(
    batch_platform: BatchPlatform, tmp_path: Path, cfg: dict[str, Any], code: str, hint: str
) -> None:
    src = tmp_path / "in"
    src.mkdir()
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    base = {"src_path": str(src), "dest_path": str(tmp_path / "out"), "mapping_type": "file", "req_uri": "/"}
    for key, value in cfg.items():
        base[key] = value.format(file=blocker, src=src) if isinstance(value, str) else value
    base = {k: v for k, v in base.items() if v is not None}
    c = batch_platform.client
    before = c.list_services()["total_count"]
    with pytest.raises(ApiError) as err:
        c.create_service(
            {
                "service_name": "bad",
                "infer_type": "batch",
                "config": [
                    {"model_id": batch_platform.picky, "specification": "modelarts.vm.cpu.1u", "instance_count": 1}
                    | base
                ],
            }
        )
    assert err.value.status == 400 and err.value.error_code == code, err.value
    assert hint in err.value.message, err.value.message
    assert c.list_services()["total_count"] == before


def test_two_configs_are_refused(batch_platform: BatchPlatform, tmp_path: Path) -> None:
    cfg = {
        "specification": "modelarts.vm.cpu.1u",
        "instance_count": 1,
        "src_path": str(tmp_path),
        "dest_path": str(tmp_path / "out"),
        "req_uri": "/",
        "mapping_type": "file",
    }
    configs = [{"model_id": batch_platform.picky, **cfg}, {"model_id": batch_platform.echo, **cfg}]
    with pytest.raises(ApiError) as err:
        batch_platform.client.create_service({"service_name": "two", "infer_type": "batch", "config": configs})
    assert err.value.error_code == "ModelArts.0101" and "exactly one config" in err.value.message


def test_stop_and_resume(batch_platform: BatchPlatform, tmp_path: Path) -> None:
    src, dest = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    _csv(src / "big.csv", 1500)
    c = batch_platform.client
    sid = batch_platform.create(
        "stop-resume",
        src_path=str(src),
        dest_path=str(dest),
        mapping_type="csv",
        mapping_rule=RULE,
        envs={"PICKY_DELAY_S": "0.01"},
    )
    wait_until(
        lambda: ((c.get_service(sid).get("batch_progress") or {}).get("processed") or 0) >= 200, 60, what="progress"
    )
    c.update_service(sid, {"status": "stopped"})
    svc = c.wait_service(sid, ("stopped",), 30)
    assert svc["status"] == "stopped", svc
    assert 200 <= svc["batch_progress"]["processed"] < 1500, svc["batch_progress"]
    assert not (dest / f"infer-result-{sid}.manifest").exists()
    c.update_service(sid, {"status": "running"})
    svc = c.wait_service(sid, ("finished", "failed"), 90)
    assert svc["status"] == "finished", svc
    assert svc["batch_progress"]["succeeded"] == 1500
    assert_exactly_once(_manifest(dest, sid), {(str(src / "big.csv"), i) for i in range(1500)})
    results = (dest / "infer-result/big.csv_result.txt").read_text().splitlines()
    assert [json.loads(r)["data"]["req_data"][0]["id"] for r in results] == list(range(1500))
    events = _events(c, sid)
    for milestone in ("25% done", "50% done", "75% done", "Batch job finished"):
        assert any(milestone in e for e in events), (milestone, events)


def test_delete_mid_run_keeps_outputs(batch_platform: BatchPlatform, tmp_path: Path) -> None:
    src, dest = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(400):
        (src / f"f{i:03d}.txt").write_text(str(i))
    c = batch_platform.client
    sid = batch_platform.create(
        "delete-me", src_path=str(src), dest_path=str(dest), mapping_type="file", envs={"PICKY_DELAY_S": "0.02"}
    )
    wait_until(lambda: len(list((dest / "infer-result").glob("*"))) >= 20, 60, what="some results")
    pids = batch_platform.proc.instance_pids()
    c.delete_service(sid)

    def gone() -> bool:
        try:
            c.get_service(sid)
        except ApiError as exc:
            return exc.status == 404
        return False

    wait_until(gone, 30, what="the service to be deleted")
    wait_until(lambda: not any(pid_alive(p) for p in pids), 30, what="its instances to exit")
    kept = list((dest / "infer-result").glob("*_result.txt"))
    assert len(kept) >= 20 and all(f.read_text() for f in kept)


def test_cli_wait_and_show(batch_platform: BatchPlatform, tmp_path: Path) -> None:
    src, dest = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    _csv(src / "t.csv", 50)
    batch_platform.create("cli-batch", src_path=str(src), dest_path=str(dest), mapping_type="csv", mapping_rule=RULE)
    out = batch_platform.proc.cli("service", "wait", "cli-batch", check=True)
    assert "finished" in out.stdout and "50/50 records" in out.stdout, out.stdout
    shown = batch_platform.proc.cli("service", "show", "cli-batch", check=True).stdout
    assert "Batch 100%" in shown and "Manifest:" in shown, shown


def test_unwritable_dest_fails_the_job_and_running_resumes_it(batch_platform: BatchPlatform, tmp_path: Path) -> None:
    src, real, dest = tmp_path / "in", tmp_path / "out", tmp_path / "dest"
    src.mkdir()
    real.mkdir()
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("x")
    for i in range(300):
        (src / f"f{i:03d}.txt").write_text(str(i))

    def point_dest_at(target: Path) -> None:  # swap the symlink atomically
        tmp = tmp_path / "dest.new"
        tmp.symlink_to(target)
        tmp.replace(dest)

    point_dest_at(real)
    c = batch_platform.client
    sid = batch_platform.create(
        "dest-breaks", src_path=str(src), dest_path=str(dest), mapping_type="file", envs={"PICKY_DELAY_S": "0.01"}
    )
    results = real / "infer-result"
    wait_until(lambda: results.is_dir() and len(list(results.glob("*"))) >= 10, 60, what="some results")
    point_dest_at(blocker)  # every result write fails now
    svc = c.wait_service(sid, ("finished", "failed"), 60)
    assert svc["status"] == "failed", svc
    assert "cannot write results" in svc["error_msg"], svc["error_msg"]
    assert svc["batch_progress"]["state"] == "failed" and svc["batch_progress"]["processed"] < 300
    point_dest_at(real)
    c.update_service(sid, {"status": "running"})
    svc = c.wait_service(sid, ("finished", "failed"), 60)
    assert svc["status"] == "finished", svc
    lines = _manifest(real, sid)
    assert_exactly_once(lines, {(str(src / f"f{i:03d}.txt"), -1) for i in range(300)})
    assert all(e["result"] == "SUCCESSFUL" for e in lines)
    assert len(list(results.glob("*_result.txt"))) == 300
