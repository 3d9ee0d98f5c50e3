"""Batch outputs in `dest_path` (spec §6): `infer-result/<name>_result.txt` and the manifest.

File mode writes each input's result object as soon as its answer is in (before the record is
committed, so a re-run after a crash overwrites it under the same name). CSV result files and the
manifest are assembled once, at the end, from the committed records in (source, row) order: each
committed key gives exactly one manifest line and, for a CSV row, exactly one result line.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable
from typing import Any

from modelport.batch.settings import BatchSettings
from modelport.batch.sources import WHOLE, Result, source_name
from modelport.batch.spec import JobSpec
from modelport.batch.storage import open_write

RESULT_DIR = "infer-result"


def result_path(spec: JobSpec, name: str) -> str:
    return spec.dest.join(RESULT_DIR, f"{name}_result.txt")


def manifest_path(spec: JobSpec) -> str:
    return spec.dest.join(f"infer-result-{spec.service_id}.manifest")


def csv_line(answer: bytes) -> str:
    """A CSV row's result line: the model's answer as it came if it is one line of UTF-8 (a JSON
    answer usually is), else its JSON re-encoded on one line (other text as a JSON string)."""
    answer = answer.strip()
    if b"\n" not in answer and b"\r" not in answer:
        try:
            return answer.decode()
        except UnicodeDecodeError:
            pass
    try:
        return json.dumps(json.loads(answer), separators=(",", ":"), ensure_ascii=False)
    except ValueError:
        return json.dumps(answer.decode("utf-8", "replace"), ensure_ascii=False)


def failed_line(error: str) -> str:
    return json.dumps({"error_message": error}, ensure_ascii=False)


def write_file_results(spec: JobSpec, results: Iterable[Result]) -> None:
    """Write the result objects of successful file-mode records (object stores: concurrently).

    A failed record's result object is removed: an earlier run may have written one for it before
    a crash, and the outputs must agree with the manifest.
    """
    objects, stale = {}, []
    for r in results:
        if r.ok and isinstance(r.output, bytes):
            objects[result_path(spec, r.name)] = r.output
        elif not r.ok and r.name and r.row == WHOLE:
            stale.append(result_path(spec, r.name))
    if objects:
        spec.dest.fs.pipe(objects)
    for path in stale:
        with contextlib.suppress(FileNotFoundError):
            spec.dest.fs.rm_file(path)


class _Lines:
    """Lines to a writer, joined and written a thousand at a time."""

    def __init__(self, out: Any) -> None:
        self.out = out
        self.pending: list[str] = []

    def add(self, line: str) -> None:
        self.pending.append(line)
        if len(self.pending) >= 1000:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.out.write(("\n".join(self.pending) + "\n").encode())
            self.pending = []

    def close(self) -> None:
        self.flush()
        self.out.close()


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def assemble(
    spec: JobSpec, settings: BatchSettings, records: Iterable[tuple[str, int, bool, str | None, str | None]]
) -> None:
    """Write the manifest (and, in CSV mode, each input's result file) from the committed records.

    Manifest lines are `{"source", ["row",] "result", "inference-loc" | "error_message"}`; a CSV
    input's result file has one line per row, in row order, failed rows included.
    """
    dest = spec.dest
    manifest = _Lines(open_write(dest, manifest_path(spec)))
    result: _Lines | None = None
    current: str | None = None
    source_json = loc_json = ""
    try:
        for source, row, ok, output, error in records:
            if source != current:
                if result is not None:
                    result.close()
                    result = None
                current, source_json, loc_json = source, _json(source), ""
            if spec.manifest and source == spec.src.url and row != WHOLE:
                # A manifest line without a usable source: keyed by its line number.
                manifest.add(_json({"source": source, "line": row, "result": "FAILED", "error_message": error}))
                continue
            if (ok or row != WHOLE) and not loc_json:
                path = result_path(spec, source_name(spec, settings, source))
                loc_json = _json(dest.url_of(path))
                if spec.mode == "csv":
                    result = _Lines(open_write(dest, path))
            head = f'{{"source": {source_json}, '
            if row != WHOLE:
                head += f'"row": {row}, '
                assert result is not None
                result.add((output or "") if ok else failed_line(error or ""))
            if ok:
                manifest.add(f'{head}"result": "SUCCESSFUL", "inference-loc": {loc_json}}}')
            else:
                manifest.add(f'{head}"result": "FAILED", "error_message": {_json(error)}}}')
    finally:
        if result is not None:
            result.close()
        manifest.close()
