"""Local backend: each instance is a subprocess in its own process group, logging to a rotated file.

What must stay true:
- A handle names our process only while `/proc/<pid>/stat` shows the start ticks recorded at
  start; a pid with other ticks was recycled by the kernel and is never signalled.
- The process group id equals the instance pid (`start_new_session=True`), so signals reach the
  children of children too.
- The child writes stdout and stderr straight into `<log_dir>/<instance_id>.log`, opened
  O_APPEND, never through a pipe to us: an instance outlives the control plane and a restarted
  control plane re-adopts it.

Linux only: identity and liveness come from `/proc`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from modelport.backends.base import Backend, InstanceHandle, InstanceSpec, ProcessState, StartError

log = logging.getLogger(__name__)

INSTANCE_ID_VAR = "MODELPORT_INSTANCE_ID"
# The platform's own configuration (database URL and the like) is not the instance's business.
_PLATFORM_ENV_PREFIX = "MODELPORT_"
_DEAD_STATES = frozenset({"Z", "X", "x"})
_STOP_POLL_S = 0.05
# SIGKILL cannot be caught; this only bounds the wait for a process stuck in uninterruptible IO.
_KILL_WAIT_S = 2.0
_TAIL_BLOCK = 64 * 1024
_COPY_BLOCK = 1024 * 1024
# A port handed out is unbound until the child binds it; don't hand it out again meanwhile.
_RECENT_PORT_S = 30.0
_EXIT_CODES_KEPT = 1024

_Key = tuple[str, int, int]  # (instance_id, pid, start_ticks): exactly one process, ever


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` right now (the kernel's pick for port 0).

    Nothing reserves it: another process may take it before the instance binds it.
    """
    family, _, _, _, addr = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # Never listened on, so closing leaves no TIME_WAIT behind to block the instance's bind.
        sock.bind(addr)
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class _ProcStat:
    state: str
    pgrp: int
    start_ticks: int


def _parse_stat(data: bytes) -> _ProcStat | None:
    # Field 2 (comm) is in parentheses and may itself hold spaces and ')': split after the last ')'.
    end = data.rfind(b")")
    if end < 0:
        return None
    fields = data[end + 1 :].split()  # fields[0] is field 3 (state), so field n is fields[n - 3]
    try:
        return _ProcStat(state=fields[0].decode(), pgrp=int(fields[2]), start_ticks=int(fields[19]))
    except (IndexError, ValueError, UnicodeDecodeError):
        return None


def _read_stat(pid: int) -> _ProcStat | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return _parse_stat(f.read())
    except OSError:  # gone, or vanished between open and read (ESRCH)
        return None


def _read_environ(pid: int) -> list[bytes] | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # Empty for zombies and kernel threads, or when /proc hides it: no evidence either way.
    return data.split(b"\0") if data else None


def _group_has_live_member(pgid: int) -> bool:
    with os.scandir("/proc") as entries:
        for entry in entries:
            if entry.name.isdigit():
                st = _read_stat(int(entry.name))
                if st is not None and st.pgrp == pgid and st.state not in _DEAD_STATES:
                    return True
    return False


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


def _child_env(spec: InstanceSpec, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_PLATFORM_ENV_PREFIX)}
    env.update(spec.env)
    env.update({"PORT": str(port), "HOST": spec.host, INSTANCE_ID_VAR: spec.instance_id})
    return env


def _backup_path(current: Path, n: int) -> Path:
    return current.with_name(f"{current.name}.{n}")


def _decode(line: bytes) -> str:
    return line.decode("utf-8", errors="replace")


def _all_lines(paths: list[Path]) -> Iterator[str]:
    # The files are one stream cut at arbitrary bytes: a line may start in one and end in the next.
    carry = b""
    for path in paths:
        try:
            f = path.open("rb")
        except FileNotFoundError:
            continue
        with f:
            for raw in f:
                if raw.endswith(b"\n"):
                    yield _decode(carry + raw[:-1])
                    carry = b""
                else:
                    carry += raw
    if carry:
        yield _decode(carry)


def _tail_lines(paths: list[Path], n: int) -> list[str]:
    """The last `n` lines of the concatenated files, reading backwards block by block."""
    if n <= 0:
        return []
    blocks: list[bytes] = []  # newest first
    newlines = 0
    for path in reversed(paths):
        try:
            f = path.open("rb")
        except FileNotFoundError:
            continue
        with f:
            pos = f.seek(0, os.SEEK_END)
            # n + 1 newlines guarantee n whole lines even when the stream ends with a newline.
            while pos > 0 and newlines <= n:
                size = min(_TAIL_BLOCK, pos)
                pos -= size
                f.seek(pos)
                block = f.read(size)
                blocks.append(block)
                newlines += block.count(b"\n")
        if newlines > n:
            break
    data = b"".join(reversed(blocks))
    if not data:
        return []
    lines = data.split(b"\n")
    if data.endswith(b"\n"):
        lines.pop()
    return [_decode(line) for line in lines[-n:]]


class LocalBackend(Backend):
    """Instances as local processes.

    Safe to call from the orchestrator's event loop: only `stop` waits, and it awaits; the other
    methods do a few syscalls (`maintain` copies at most one log file when it rotates).
    """

    name = "local"

    def __init__(self, log_max_bytes: int = 10 * 1024 * 1024, log_backups: int = 3) -> None:
        self.log_max_bytes = log_max_bytes
        self.log_backups = log_backups
        # Our own children, so we can reap them and learn exit codes; adopted ones are not here.
        self._children: dict[_Key, subprocess.Popen[bytes]] = {}
        self._exit_codes: OrderedDict[_Key, int] = OrderedDict()
        self._recent_ports: dict[int, float] = {}

    # -- start ---------------------------------------------------------------------------------

    async def start(self, spec: InstanceSpec) -> InstanceHandle:
        if not spec.argv:
            raise StartError(f"instance {spec.instance_id}: empty command")
        self._reap_all()
        port = spec.port if spec.port is not None else self._pick_port(spec.host)
        log_path = Path(spec.log_dir) / f"{spec.instance_id}.log"
        try:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            raise StartError(f"cannot open log file {log_path}: {exc.strerror or exc}") from exc
        program = spec.argv[0]
        if os.sep not in program and shutil.which(program) is None:
            os.close(fd)
            raise StartError(f"cannot start {program!r}: not found on PATH")
        if os.sep in program and not os.access(Path(spec.cwd, program), os.X_OK):
            os.close(fd)
            raise StartError(f"cannot start {program!r} in {spec.cwd!r}: not an executable file")
        shim = [
            sys.executable, "-m", "modelport.backends.logshim",
            "--log", str(log_path), "--max-bytes", str(self.log_max_bytes), "--backups", str(self.log_backups),
            "--", *spec.argv,
        ]  # fmt: skip
        try:
            # The shim writes the instance's output to the log; its own last words, if it dies, too.
            proc = subprocess.Popen(
                shim,
                cwd=spec.cwd,
                env=_child_env(spec, port),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=fd,
                start_new_session=True,
            )
        except OSError as exc:
            raise StartError(f"cannot start {spec.argv[0]!r} in {spec.cwd!r}: {exc.strerror or exc}") from exc
        finally:
            os.close(fd)
        # The child is not reaped until we poll it, so its stat is readable even if it already died.
        stat = _read_stat(proc.pid)
        if stat is None:
            proc.kill()
            proc.wait()
            raise StartError(f"instance {spec.instance_id}: cannot read /proc/{proc.pid}/stat")
        self._children[(spec.instance_id, proc.pid, stat.start_ticks)] = proc
        return InstanceHandle(
            instance_id=spec.instance_id,
            backend=self.name,
            host=spec.host,
            port=port,
            pid=proc.pid,
            start_ticks=stat.start_ticks,
            log_path=str(log_path),
        )

    def _pick_port(self, host: str) -> int:
        now = time.monotonic()
        self._recent_ports = {p: t for p, t in self._recent_ports.items() if now - t < _RECENT_PORT_S}
        try:
            port = free_port(host)
            for _ in range(20):
                if port not in self._recent_ports:
                    break
                port = free_port(host)
        except OSError as exc:
            raise StartError(f"no free port on {host}: {exc.strerror or exc}") from exc
        self._recent_ports[port] = now
        return port

    # -- reaping and identity -------------------------------------------------------------------

    def _reap(self, handle: InstanceHandle) -> int | None:
        key = (handle.instance_id, handle.pid, handle.start_ticks)
        proc = self._children.get(key)
        if proc is not None and proc.poll() is not None:
            self._remember_exit(key, proc)
        return self._exit_codes.get(key)

    def _reap_all(self) -> None:
        for key, proc in list(self._children.items()):
            if proc.poll() is not None:
                self._remember_exit(key, proc)

    def _remember_exit(self, key: _Key, proc: subprocess.Popen[bytes]) -> None:
        # pop, not del: the API thread may poll the same instance as the reconcile loop.
        self._children.pop(key, None)
        if proc.returncode is not None:
            self._exit_codes[key] = proc.returncode
        while len(self._exit_codes) > _EXIT_CODES_KEPT:
            self._exit_codes.popitem(last=False)

    @staticmethod
    def _recycled(handle: InstanceHandle, st: _ProcStat | None) -> bool:
        return st is not None and st.start_ticks != handle.start_ticks

    def _group_alive(self, handle: InstanceHandle) -> bool:
        """Does any live process of the instance's group remain (leader or descendants)?"""
        self._reap(handle)
        leader = _read_stat(handle.pid)
        if self._recycled(handle, leader):
            # The kernel frees a pid only once no process uses it as pid or group id: our group is gone.
            return False
        if leader is not None and leader.state not in _DEAD_STATES:
            return True
        try:
            os.killpg(handle.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        # Zombies answer signal 0 too; only a scan tells live members from unreaped ones.
        return _group_has_live_member(handle.pid)

    def _signal_group(self, handle: InstanceHandle, sig: signal.Signals) -> bool:
        """Signal the instance's process group; False if nothing of ours was left to signal."""
        leader = _read_stat(handle.pid)
        if self._recycled(handle, leader):
            return False
        sent = False
        try:
            os.killpg(handle.pid, sig)
            sent = True
        except ProcessLookupError:
            pass
        except PermissionError:
            log.warning("not allowed to signal process group %d of %s", handle.pid, handle.instance_id)
        # A leader that moved itself to another group is still ours to stop.
        if leader is not None and leader.pgrp != handle.pid and leader.state not in _DEAD_STATES:
            try:
                os.kill(handle.pid, sig)
                sent = True
            except (ProcessLookupError, PermissionError):
                pass
        return sent

    # -- the Backend contract -------------------------------------------------------------------

    def poll(self, handle: InstanceHandle) -> ProcessState:
        key = (handle.instance_id, handle.pid, handle.start_ticks)
        proc = self._children.get(key)
        if proc is not None:
            if proc.poll() is None:
                return ProcessState(running=True)
            self._remember_exit(key, proc)
        code = self._exit_codes.get(key)
        if code is not None:
            return ProcessState(running=False, exit_code=code, detail=_describe_exit(code))
        st = _read_stat(handle.pid)
        if st is None or st.state in _DEAD_STATES:
            return ProcessState(running=False, detail="exited")
        if st.start_ticks != handle.start_ticks:
            return ProcessState(running=False, detail="exited (its pid now belongs to another process)")
        return ProcessState(running=True)

    async def stop(self, handle: InstanceHandle, grace_s: float) -> int | None:
        """SIGTERM the group, wait up to `grace_s` for all of it to exit, then SIGKILL what is left.

        Waits for the whole group, not only the leader, so a worker the leader spawned gets the
        same grace. A process that left the group (setsid, daemonising) is out of reach.
        """
        if self._signal_group(handle, signal.SIGTERM):
            await self._wait_group_exit(handle, grace_s, _STOP_POLL_S)
            if self._group_alive(handle) and self._signal_group(handle, signal.SIGKILL):
                await self._wait_group_exit(handle, _KILL_WAIT_S, 0.01)
        return self._reap(handle)

    async def _wait_group_exit(self, handle: InstanceHandle, timeout_s: float, step_s: float) -> None:
        deadline = time.monotonic() + max(timeout_s, 0.0)
        while self._group_alive(handle):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(min(step_s, left))

    def adopt(self, handle: InstanceHandle) -> bool:
        if handle.backend != self.name:
            return False
        st = _read_stat(handle.pid)
        if st is None or st.state in _DEAD_STATES or st.start_ticks != handle.start_ticks:
            return False
        environ = _read_environ(handle.pid)
        if environ is None:  # unreadable (another user, hardened /proc): the ticks must do
            return True
        return f"{INSTANCE_ID_VAR}={handle.instance_id}".encode() in environ

    # -- logs -----------------------------------------------------------------------------------

    def log_paths(self, handle: InstanceHandle) -> list[Path]:
        """Existing log files of the instance, oldest first: `.log.N`, ..., `.log.1`, `.log`."""
        current = Path(handle.log_path)
        backups: list[Path] = []
        n = 1
        while (path := _backup_path(current, n)).exists():
            backups.append(path)
            n += 1
        paths = backups[::-1]
        if current.exists():
            paths.append(current)
        return paths

    def read_logs(self, handle: InstanceHandle, tail: int | None = None) -> Iterator[str]:
        """Lines (without the newline) oldest first across rotated files; `tail` keeps the last N."""
        paths = self.log_paths(handle)
        if tail is None:
            yield from _all_lines(paths)
        else:
            yield from _tail_lines(paths, tail)
