"""Batch inputs → records, streamed: files under `src_path`, lines of a manifest, rows of CSV files.

A record is keyed by `(source, row)`: the input's URL and, for a CSV row, its 0-based index; -1
stands for a whole input (a file in file mode, or a CSV input that failed as a whole). Everything
is lazy: a directory is walked entry by entry, a manifest and a CSV file are read line by line,
and records come out in small batches, of which the caller holds only a bounded number.

Bad input never raises out of here: an input that is missing, unreadable or not CSV, a manifest
line without a usable `source`, and a row that does not fit the mapping_rule come out as a failed
`Result` with the reason, so only that record fails.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

from modelport.batch.calls import file_request, json_request
from modelport.batch.mapping import RowError
from modelport.batch.settings import BatchSettings
from modelport.batch.spec import JobSpec
from modelport.batch.storage import Location, resolve, walk_files
from modelport.errors import PlatformError

Key = tuple[str, int]
WHOLE = -1  # the row of a record that stands for a whole input

FILE_BATCH = 16
CSV_BATCH = 500
# One encoder for every request (json.dumps with options builds a new encoder per call).
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


@dataclass(slots=True)
class Record:
    """A record waiting for its inference call."""

    source: str
    row: int
    name: str  # the input's name under its root: its result is infer-result/<name>_result.txt
    head: bytes
    body: bytes
    attempts: int = 0


@dataclass(slots=True)
class Result:
    """A record's final outcome. `output`: the model's answer (file mode) or result line (csv)."""

    source: str
    row: int
    name: str
    ok: bool
    output: bytes | str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class _Input:
    url: str
    loc: Location
    path: str
    name: str


def _name_under(base: str, path: str) -> str:
    """`path` relative to the directory `base`, or the whole path (without a leading /) if outside."""
    base = base.rstrip("/") + "/"
    return path[len(base) :] if path.startswith(base) else path.lstrip("/")


def input_name(spec: JobSpec, path: str) -> str:
    """The name an input's result goes under: its path below `src_path` (or below the manifest's
    directory), so that inputs of the same file name in different directories never collide."""
    if spec.manifest:
        return _name_under(os.path.dirname(spec.src.path), path)
    return os.path.basename(path) if path == spec.src.path else _name_under(spec.src.path, path)


def source_name(spec: JobSpec, settings: BatchSettings, source: str) -> str:
    """`input_name` of a committed record's source URL."""
    if spec.manifest:
        return input_name(spec, resolve(source, settings, field="source").path)
    return input_name(spec, source[len(spec.src.prefix) :])


def _inputs(spec: JobSpec, settings: BatchSettings) -> Iterator[_Input | Result]:
    src = spec.src
    if spec.manifest:
        yield from _manifest_inputs(spec, settings)
        return
    count = 0
    try:
        for path in walk_files(src):
            count += 1
            yield _Input(src.url_of(path), src, path, input_name(spec, path))
    except FileNotFoundError:
        pass
    except OSError as exc:
        yield Result(src.url, WHOLE, "", False, error=f"cannot list src_path {src.url}: {exc}")
        return
    if count == 0:
        yield Result(src.url, WHOLE, "", False, error=f"src_path {src.url} has no input files (missing or empty)")


def _manifest_inputs(spec: JobSpec, settings: BatchSettings) -> Iterator[_Input | Result]:
    src = spec.src
    try:
        fh = src.fs.open(src.path, "rb")
    except OSError as exc:
        yield Result(src.url, WHOLE, "", False, error=f"cannot read the manifest {src.url}: {exc}")
        return
    with fh, io.TextIOWrapper(fh, encoding="utf-8-sig") as text:
        for number, line in enumerate(text, start=1):
            if not line.strip():
                continue
            try:
                source = json.loads(line)["source"]
                if not isinstance(source, str):
                    raise TypeError
                loc = resolve(source, settings, field="source")
            except (ValueError, KeyError, TypeError):
                yield Result(src.url, number, "", False, error=f'manifest line {number} is not {{"source": "<url>"}}')
                continue
            except PlatformError as exc:
                yield Result(source, WHOLE, "", False, error=exc.message)
                continue
            yield _Input(source, loc, loc.path, input_name(spec, loc.path))


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


IsDone = Callable[[list[Key]], set[Key]]


def batches(spec: JobSpec, settings: BatchSettings, is_done: IsDone) -> Iterator[list[Record | Result]]:
    """The job's records not yet committed, in small batches (call `next` from a worker thread)."""
    if spec.mode == "file":
        yield from _file_batches(spec, settings, is_done)
    else:
        yield from _csv_batches(spec, settings, is_done)


def _file_batches(spec: JobSpec, settings: BatchSettings, is_done: IsDone) -> Iterator[list[Record | Result]]:
    for chunk in _chunks(_inputs(spec, settings), FILE_BATCH):
        done = is_done([(i.url, WHOLE) if isinstance(i, _Input) else (i.source, i.row) for i in chunk])
        todo = [i for i in chunk if ((i.url, WHOLE) if isinstance(i, _Input) else (i.source, i.row)) not in done]
        if todo:
            yield list(_read_files(spec, todo))


def _read_files(spec: JobSpec, items: list[_Input | Result]) -> Iterator[Record | Result]:
    by_fs: dict[int, list[_Input]] = {}
    for item in items:
        if isinstance(item, Result):
            yield item
        else:
            by_fs.setdefault(id(item.loc.fs), []).append(item)
    for group in by_fs.values():
        fs = group[0].loc.fs
        try:
            contents = fs.cat([i.path for i in group], on_error="return")
        except Exception as exc:
            contents = {i.path: exc for i in group}
        for item in group:
            data = contents.get(item.path, FileNotFoundError(item.path))
            if isinstance(data, BaseException):
                yield Result(item.url, WHOLE, item.name, False, error=f"cannot read {item.url}: {_why(data)}")
                continue
            head, body = file_request(spec.req_uri, spec.file_field, os.path.basename(item.path), data)
            yield Record(item.url, WHOLE, item.name, head, body)


def _why(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, IsADirectoryError):
        return "it is a directory, not a file"
    return str(exc) or type(exc).__name__


def _csv_batches(spec: JobSpec, settings: BatchSettings, is_done: IsDone) -> Iterator[list[Record | Result]]:
    pending: list[Record | Result] = []
    for item in _inputs(spec, settings):
        if isinstance(item, Result):
            pending.append(item)
            continue
        for chunk in _chunks(_csv_records(spec, item), CSV_BATCH):
            keys = [(r.source, r.row) for r in chunk]
            done = is_done(keys)
            pending += [r for r, k in zip(chunk, keys, strict=True) if k not in done]
            if len(pending) >= CSV_BATCH:
                yield pending
                pending = []
    if pending:
        done = is_done([(r.source, r.row) for r in pending if isinstance(r, Result)])
        pending = [r for r in pending if not isinstance(r, Result) or (r.source, r.row) not in done]
        if pending:
            yield pending


def _csv_records(spec: JobSpec, item: _Input) -> Iterator[Record | Result]:
    """One record per row, the request built by the mapping_rule; failures as failed results."""
    mapping = spec.mapping
    assert mapping is not None
    if not item.name.lower().endswith(".csv"):
        yield Result(item.url, WHOLE, item.name, False, error=f"{item.url} is not a .csv file (mapping_type csv)")
        return
    rows = 0
    for row, cells in read_csv(item.loc, item.path):
        if isinstance(cells, BaseException):
            msg = f"cannot read {item.url} after {row} row(s): {_why(cells)}"
            yield Result(item.url, WHOLE, item.name, False, error=msg)
            return
        rows += 1
        if isinstance(cells, str):  # a row the csv module could not parse
            yield Result(item.url, row, item.name, False, error=f"row {row}: malformed CSV ({cells})")
            continue
        try:
            body = _encode(mapping.build(cells)).encode()
        except RowError as exc:
            yield Result(item.url, row, item.name, False, error=f"row {row}: {exc}")
            continue
        head, body = json_request(spec.req_uri, body)
        yield Record(item.url, row, item.name, head, body)
    if rows == 0:  # nothing to call, but the input must still show up in the manifest
        yield Result(item.url, WHOLE, item.name, True, output="")


def read_csv(loc: Location, path: str) -> Iterator[tuple[int, list[str] | str | BaseException]]:
    """`(row index, cells)` one row at a time; a malformed row gives its error text, a failed read
    the exception (last)."""
    try:
        fh = loc.fs.open(path, "rb")
    except Exception as exc:
        yield 0, exc
        return
    row = 0
    with fh:
        lines = _lines(fh)
        reader = csv.reader(lines)
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield row, str(exc)
                row += 1
                continue
            except Exception as exc:  # I/O or decoding error: the rest of the file is unreadable
                yield row, exc
                return
            yield row, cells
            row += 1


def _lines(fh: Any) -> Iterator[str]:
    """UTF-8 lines of a binary file read in blocks (BOM dropped); only \\n ends a line, so a line
    break inside a quoted field reaches the csv module as it should. A line that is not UTF-8
    raises `UnicodeDecodeError` once the lines before it are out."""
    rest = b""
    first = True
    while block := fh.read(1 << 16):
        parts = (rest + block).split(b"\n")
        rest = parts.pop()
        for part in parts:
            line = part.decode() + "\n"
            if first:
                line, first = line.removeprefix("\ufeff"), False
            yield line
    if rest:
        yield rest.decode().removeprefix("\ufeff") if first else rest.decode()


def count_records(spec: JobSpec, settings: BatchSettings) -> int:
    """How many records the job has, for progress: a CSV input counts its lines (fast, without
    parsing; an estimate when a quoted field spans lines), any other input counts once."""
    total = 0
    for item in _inputs(spec, settings):
        if isinstance(item, Result) or spec.mode == "file" or not item.name.lower().endswith(".csv"):
            total += 1
            continue
        total += max(1, _count_lines(item.loc, item.path))
    return total


def _count_lines(loc: Location, path: str) -> int:
    lines, last = 0, b""
    try:
        with loc.fs.open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                lines += block.count(b"\n")
                last = block[-1:]
    except Exception:
        return lines + 1  # the rows read so far, and the input's failure
    return lines + (1 if last and last != b"\n" else 0)
