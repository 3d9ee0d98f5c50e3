"""Instance log shim: runs the instance command and writes its output, timestamped, to a rotated file.

`python -m modelport.backends.logshim --log FILE [--max-bytes N] [--backups K] -- COMMAND...`

Like conmon for containers, one small process per instance sits between the instance and its
log file, so that:
- every line gets a timestamp and its stream, in the CRI log format
  (`2026-11-21T22:50:01.123456Z stdout F <text>`; `P` marks a line split because it was too long),
  which is what lets the logs API answer "since <time>";
- rotation is a rename done by the writer itself, so no line is lost;
- it lives in the instance's session, not the control plane's, so an instance outlives a
  control-plane restart and is re-adopted.

Signals: the backend signals the whole process group; the shim ignores SIGTERM/SIGINT itself and
waits for the command to exit, then exits with the command's status (re-raising a fatal signal on
itself, so the parent sees "killed by SIGKILL" when the OOM killer took the instance). If the
shim itself is killed, the kernel kills the command too (PR_SET_PDEATHSIG), so nothing runs
unlogged and unsupervised.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import BinaryIO, NamedTuple

_MAX_LINE = 16 * 1024
_PR_SET_PDEATHSIG = 1


class LogLine(NamedTuple):
    time: str  # RFC 3339, UTC
    stream: str  # stdout | stderr
    text: str


def timestamp(ns: int | None = None) -> str:
    ns = time.time_ns() if ns is None else ns
    secs, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac // 1000:06d}Z"


def parse_line(raw: str) -> LogLine:
    """A line of the log file; lines not in CRI format (written by older versions) keep an empty time."""
    parts = raw.split(" ", 3)
    if len(parts) == 4 and parts[1] in ("stdout", "stderr") and parts[2] in ("F", "P") and parts[0].endswith("Z"):
        return LogLine(parts[0], parts[1], parts[3])
    return LogLine("", "stdout", raw)


class RotatingWriter:
    """Appends lines to `path`; when it passes `max_bytes`, renames it to `.1` (shifting older ones)."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path, self.max_bytes, self.backups = path, max_bytes, backups
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: BinaryIO = path.open("ab")
        self._size = self._fh.tell()

    def write(self, stream: str, chunk: bytes) -> None:
        partial = not chunk.endswith(b"\n")
        body = chunk.rstrip(b"\n").replace(b"\r", b"")
        line = f"{timestamp()} {stream} {'P' if partial else 'F'} ".encode() + body + b"\n"
        with self._lock:
            self._fh.write(line)
            self._fh.flush()
            self._size += len(line)
            if self._size > self.max_bytes:
                self._rotate()

    def _rotate(self) -> None:
        self._fh.close()
        if self.backups > 0:
            for n in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{n}")
                if older.exists():
                    older.replace(self.path.with_name(f"{self.path.name}.{n + 1}"))
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        self._fh = self.path.open("ab")
        self._size = 0

    def close(self) -> None:
        with self._lock:
            self._fh.close()


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _pump(pipe: BinaryIO, stream: str, writer: RotatingWriter) -> None:
    for chunk in iter(lambda: pipe.readline(_MAX_LINE), b""):
        writer.write(stream, chunk)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="logshim")
    parser.add_argument("--log", required=True, type=Path)
    parser.add_argument("--max-bytes", type=int, default=10 * 1024 * 1024)
    parser.add_argument("--backups", type=int, default=3)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    writer = RotatingWriter(args.log, args.max_bytes, args.backups)
    if not command:
        writer.write("stderr", b"[modelport] logshim: no command given\n")
        return 2
    # The group gets SIGTERM from the backend; the command handles it, we wait for the command.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=_restore_and_die_with_parent,
        )
    except OSError as exc:
        writer.write("stderr", f"[modelport] cannot start {command[0]!r}: {exc.strerror or exc}\n".encode())
        return 127
    pumps = [
        threading.Thread(target=_pump, args=(proc.stdout, "stdout", writer), daemon=True),
        threading.Thread(target=_pump, args=(proc.stderr, "stderr", writer), daemon=True),
    ]
    for t in pumps:
        t.start()
    code = proc.wait()
    # Output the command wrote before exiting is in the pipes; drain it. A straggler child that
    # inherited the pipes may keep them open: don't wait for it (the backend kills the group).
    deadline = time.monotonic() + 0.2
    for t in pumps:
        t.join(max(0.0, deadline - time.monotonic()))
    writer.close()
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


def _restore_and_die_with_parent() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    _die_with_parent()


if __name__ == "__main__":
    sys.exit(main())


class LogFollower:
    """Reads what is appended to a shim log file from now on, across renames by the shim's rotation."""

    def __init__(self, path: Path, from_start: bool = False) -> None:
        self.path = path
        self._ino, self._offset = (None, 0) if from_start else self._stat()
        self._partial = b""

    def _stat(self) -> tuple[int | None, int]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None, 0
        return st.st_ino, st.st_size

    def _read_from(self, path: Path, offset: int) -> tuple[bytes, int]:
        try:
            with path.open("rb") as fh:
                fh.seek(offset)
                data = fh.read()
        except FileNotFoundError:
            return b"", offset
        return data, offset + len(data)

    def poll(self) -> list[str]:
        """Complete new lines since the last call, oldest first."""
        ino, size = self._stat()
        data = b""
        if ino != self._ino and self._ino is not None:
            # Rotated: finish the renamed file (now .1), then start the new one from its beginning.
            rotated = self.path.with_name(f"{self.path.name}.1")
            try:
                if rotated.stat().st_ino == self._ino:
                    data, _ = self._read_from(rotated, self._offset)
            except FileNotFoundError:
                pass
            self._ino, self._offset = ino, 0
        elif self._ino is None:
            self._ino, self._offset = ino, 0
        if ino is not None and size >= self._offset:
            more, self._offset = self._read_from(self.path, self._offset)
            data += more
        elif ino is not None:  # truncated by someone else: start over
            self._offset = 0
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        return [line.decode("utf-8", "replace") for line in lines]
