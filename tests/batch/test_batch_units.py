"""Unit tests: mapping_rule → request building, CSV streaming, record enumeration in bounded memory."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelport.batch.mapping import RowError, RuleError, compile_rule
from modelport.batch.settings import BatchSettings
from modelport.batch.sources import WHOLE, Record, Result, batches, count_records, read_csv
from modelport.batch.spec import job_spec
from modelport.batch.storage import resolve
from modelport.errors import PlatformError

SPEC_EXAMPLE = {
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
                            "properties": {f"input_{i + 1}": {"type": "number", "index": i} for i in range(4)},
                        }
                    ],
                }
            },
        }
    },
}


def test_spec_example() -> None:
    mapping = compile_rule(SPEC_EXAMPLE)
    assert mapping.build(["5.1", "3.5", "1.4", "0.2"]) == {
        "data": {"req_data": [{"input_1": 5.1, "input_2": 3.5, "input_3": 1.4, "input_4": 0.2}]}
    }


def test_dropped_fields_types_and_arrays() -> None:
    rule = {
        "type": "object",
        "properties": {
            "n": {"type": "integer", "index": 0},
            "flag": {"type": "boolean", "index": 1},
            "name": {"type": "string", "index": 2},
            "gone": {"type": "string", "index": -1},  # -1 drops the field
            "bad_index": {"type": "number", "index": "2"},  # not an integer: dropped
            "no_index": {"type": "number"},  # no index: dropped
            "maybe": {"type": ["number", "null"], "index": 3},
            "one": {"type": "array", "items": {"type": "number", "index": 3}},
        },
    }
    mapping = compile_rule(rule)
    assert mapping.columns == 4
    assert mapping.build(["7", "yes", "x y", "2.5", "ignored"]) == {
        "n": 7,
        "flag": True,
        "name": "x y",
        "maybe": 2.5,
        "one": [2.5],
    }
    assert mapping.build(["7.0", "FALSE", "", "3"])["n"] == 7  # an integral float is an integer
    assert mapping.build(["7.0", "FALSE", "", "3"])["flag"] is False


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (["1", "true"], "row has 2 column(s) but mapping_rule reads column 3"),
        (["1.5", "true", "a", "1"], "'1.5' is not a valid integer for n"),
        (["1", "maybe", "a", "1"], "'maybe' is not a valid boolean for flag"),
        (["1", "true", "a", "nan"], "'nan' is not a valid number for x"),
        (["1", "true", "a", ""], "'' is not a valid number for x"),
    ],
)
def test_rows_that_do_not_fit(row: list[str], message: str) -> None:
    rule = {
        "type": "object",
        "properties": {
            "n": {"type": "integer", "index": 0},
            "flag": {"type": "boolean", "index": 1},
            "s": {"type": "string", "index": 2},
            "x": {"type": "number", "index": 3},
        },
    }
    with pytest.raises(RowError) as err:
        compile_rule(rule).build(row)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"type": "object", "properties": {"a": {"type": "number", "index": -1}}}, "maps no column"),
        ({"type": "object", "properties": []}, "properties must be an object"),
        ({"type": "object", "properties": {"a": {"type": "date", "index": 0}}}, "unsupported type 'date'"),
        ("not a schema", "must be a JSON-schema object"),
    ],
)
def test_bad_rules(rule: Any, message: str) -> None:
    with pytest.raises(RuleError) as err:
        compile_rule(rule)
    assert message in str(err.value)


@given(st.lists(st.integers(min_value=-(10**12), max_value=10**12), min_size=1, max_size=12))
def test_every_column_lands_in_its_field(values: list[int]) -> None:
    """Property: with one leaf per column, the request carries each column's value under its name."""
    rule = {"type": "object", "properties": {f"c{i}": {"type": "integer", "index": i} for i in range(len(values))}}
    request = compile_rule(rule).build([str(v) for v in values])
    assert request == {f"c{i}": v for i, v in enumerate(values)}
    assert json.loads(json.dumps(request)) == request


def test_read_csv_quirks(tmp_path: Path) -> None:
    path = tmp_path / "q.csv"
    path.write_bytes('\ufeffa,"b, c"\r\n"multi\nline",d\r\n\r\nlast,row'.encode())
    loc = resolve(str(path), BatchSettings())
    rows = list(read_csv(loc, str(path)))
    assert rows == [(0, ["a", "b, c"]), (1, ["multi\nline", "d"]), (2, []), (3, ["last", "row"])]


def test_read_csv_undecodable_tail(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(b"1,2\n3,4\n" + b"\xff\xfe\xfa\n" * 3)
    loc = resolve(str(path), BatchSettings())
    rows = list(read_csv(loc, str(path)))
    assert rows[:2] == [(0, ["1", "2"]), (1, ["3", "4"])]
    assert isinstance(rows[-1][1], UnicodeDecodeError)


def _spec(src: Path, dest: Path, mode: str = "csv", **extra: Any):  # type: ignore[no-untyped-def]
    cfg = {"src_path": str(src), "dest_path": str(dest), "req_uri": "/", "mapping_type": mode, **extra}
    if mode == "csv":
        cfg["mapping_rule"] = {"type": "object", "properties": {"a": {"type": "integer", "index": 0}}}
    return job_spec("svc", cfg, None, BatchSettings())


def _drain(spec, done: set[tuple[str, int]] | None = None) -> list[Record | Result]:  # type: ignore[no-untyped-def]
    done = done or set()
    out: list[Record | Result] = []
    for batch in batches(spec, BatchSettings(), lambda keys: {k for k in keys if k in done}):
        out += batch
    return out


def test_csv_records_skip_committed_ones(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "t.csv").write_text("1\n2\nx\n4\n")
    spec = _spec(tmp_path / "in", tmp_path / "out")
    src = str(tmp_path / "in" / "t.csv")
    records = _drain(spec)
    assert [(r.source, r.row, type(r).__name__) for r in records] == [
        (src, 0, "Record"),
        (src, 1, "Record"),
        (src, 2, "Result"),
        (src, 3, "Record"),
    ]
    assert records[0].body == b'{"a":1}' and b"content-type: application/json" in records[0].head
    assert count_records(spec, BatchSettings()) == 4
    again = _drain(spec, done={(src, 0), (src, 2)})
    assert [r.row for r in again] == [1, 3]


def test_file_records_and_missing_src(tmp_path: Path) -> None:
    (tmp_path / "in" / "d").mkdir(parents=True)
    (tmp_path / "in" / "a.png").write_bytes(b"\x89PNG")
    (tmp_path / "in" / "d" / "a.png").write_bytes(b"x")
    spec = _spec(tmp_path / "in", tmp_path / "out", mode="file")
    records = sorted(_drain(spec), key=lambda r: r.source)
    assert [(r.name, r.row) for r in records] == [("a.png", WHOLE), ("d/a.png", WHOLE)]
    first = records[0]
    assert isinstance(first, Record)
    assert b'name="images"; filename="a.png"' in first.body and b"\x89PNG" in first.body
    missing = _drain(_spec(tmp_path / "nope", tmp_path / "out", mode="file"))
    assert len(missing) == 1 and isinstance(missing[0], Result) and "no input files" in (missing[0].error or "")


def test_100k_csv_rows_stream_in_bounded_memory(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    with (src / "big.csv").open("w") as fh:
        for i in range(100_000):
            fh.write(f"{i},some text to make the row longer {i}\n")
    spec = _spec(src, tmp_path / "out")
    tracemalloc.start()
    try:
        n = 0
        for batch in batches(spec, BatchSettings(), lambda keys: set()):
            n += len(batch)  # the caller holds one batch at a time
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert n == 100_000
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MiB while streaming 100k rows"


def test_10k_files_listed_lazily(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for i in range(10_000):
        (src / f"{i:05d}.txt").write_bytes(b"x")
    spec = _spec(src, tmp_path / "out", mode="file")
    tracemalloc.start()
    try:
        n = sum(len(batch) for batch in batches(spec, BatchSettings(), lambda keys: set()))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert n == 10_000
    assert peak < 4 * 2**20, f"peak {peak / 2**20:.1f} MiB while listing 10k files"


def test_unusable_urls() -> None:
    for url, detail in [("relative/x", "relative path"), ("ftp://h/x", "ftp://"), ("s3:///x", "no bucket")]:
        with pytest.raises(PlatformError) as err:
            resolve(url, BatchSettings())
        assert err.value.code == "ModelArts.3572" and detail in err.value.message
