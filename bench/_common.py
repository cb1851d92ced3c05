"""Helpers shared by the bench scripts: child processes that always get cleaned up, /proc readings, a loopback
target server for bulk transfers, a SOCKS5 client, medians and table formatting.

Nothing here depends on alknet; the scripts import alknet (or asyncssh) themselves.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
import socket
import socketserver
import statistics
import struct
import subprocess
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

CHUNK = 1 << 20  # 1 MiB: the source writes and the sink reads this much per system call
MIB = 1 << 20
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------------------- processes


try:
    _LIBC: Any = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:  # pragma: no cover - not glibc
    _LIBC = None


def _die_with_parent() -> None:  # runs in the child between fork and exec: no imports, no allocation
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: a SIGKILLed bench still takes its children along


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return self.log.read_text(errors="replace")


@dataclass
class Children:
    """Every process the bench starts. Each runs in its own session (process group = its pid), so that
    :meth:`stop` also ends what it forked (sshd's per-connection processes) by that group id, never by name."""

    items: list[Child] = field(default_factory=list)

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log: Path | None = None,
        env: dict[str, str] | None = None,
        stdout: int | IO[Any] | None = subprocess.DEVNULL,
    ) -> Child:
        err: IO[Any] | int = subprocess.DEVNULL
        fh = None
        if log is not None:
            fh = open(log, "wb")  # noqa: SIM115 - handed to the child, closed right after the spawn
            err = fh
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=err,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        finally:
            if fh is not None:
                fh.close()
        child = Child(name, proc, log)
        self.items.append(child)
        return child

    def stop(self, child: Child, timeout: float = 5.0) -> None:
        proc = child.proc
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(5)
        _signal_group(proc.pid, signal.SIGKILL)  # leftovers of the group (sshd session processes)
        if proc.stdout is not None:
            with contextlib.suppress(Exception):
                proc.stdout.close()
        with contextlib.suppress(ValueError):
            self.items.remove(child)

    def stop_all(self) -> None:
        for child in reversed(list(self.items)):
            with contextlib.suppress(Exception):
                self.stop(child, timeout=3.0)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    want = min(want, 65536)
    if soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float, child: Child | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child is not None and not child.alive():
            raise RuntimeError(f"{child.name} exited ({child.proc.returncode}): {child.log_text()[-2000:]}")
        with socket.socket() as s:
            s.settimeout(1.0)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} never accepted within {timeout:g} s")


def wait_log(child: Child, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in child.log_text():
            return
        if not child.alive():
            raise RuntimeError(f"{child.name} exited ({child.proc.returncode}): {child.log_text()[-2000:]}")
        time.sleep(0.05)
    raise TimeoutError(f"{child.name}: no {text!r} within {timeout:g} s: {child.log_text()[-2000:]}")


# ------------------------------------------------------------------------------------------------ /proc


def _status_kib(pid: int, field_name: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise KeyError(field_name)


def rss_kib(pid: int) -> int:
    """VmRSS of one process, KiB."""
    return _status_kib(pid, "VmRSS")


def pss_kib(pid: int) -> int:
    """Proportional set size (shared pages split between their users), KiB; 0 if the process is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return 0
    return 0


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            text = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text[text.rfind(")") + 2 :].split()


def tree_pids(root: int) -> list[int]:
    """``root`` and all its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU time of the given processes (all threads), seconds."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / CLK_TCK


def tree_cpu(root: int) -> float:
    return cpu_seconds(tree_pids(root))


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat; busy excludes idle and iowait."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle, total


def busy_percent(before: tuple[int, int], after: tuple[int, int]) -> float:
    """Share of all CPUs' time spent busy between two :func:`machine_ticks` readings, in percent of the
    whole machine (100 = every core busy)."""
    total = after[1] - before[1]
    return 100.0 * (after[0] - before[0]) / total if total > 0 else float("nan")


# ------------------------------------------------------------------------------------- bulk transfers

_HEADER = struct.Struct("!cQ")  # b"U" (client sends n bytes) or b"D" (target sends n bytes), then n
_PAYLOAD = bytes(range(256)) * (CHUNK // 256)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        part = sock.recv(n - len(buf))
        if not part:
            raise ConnectionError(f"EOF after {len(buf)} of {n} bytes")
        buf += part
    return bytes(buf)


def _drain(sock: socket.socket, n: int) -> None:
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    left = n
    while left:
        got = sock.recv_into(view, min(left, CHUNK))
        if not got:
            raise ConnectionError(f"EOF with {left} of {n} bytes missing")
        left -= got


def _send(sock: socket.socket, n: int) -> None:
    view = memoryview(_PAYLOAD)
    left = n
    while left:
        size = min(left, CHUNK)
        sock.sendall(view[:size])
        left -= size


class _TargetHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(self.server.io_timeout)  # type: ignore[attr-defined]
        try:
            kind, n = _HEADER.unpack(_recv_exact(sock, _HEADER.size))
            if kind == b"U":
                _drain(sock, n)
                sock.sendall(b"K")
            elif kind == b"D":
                _send(sock, n)
                sock.shutdown(socket.SHUT_WR)
                sock.recv(1)  # wait for the client to finish reading and close
        except (OSError, ConnectionError):
            pass


class _ThreadingServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


class TargetServer:
    """The far end of every tunnel, on 127.0.0.1: counts what the client uploads (and acks the last byte), or
    sends what the client asks to download. Blocking sockets in threads: the kernel does the copying, so this
    costs the same for every tunnel under test."""

    def __init__(self, io_timeout: float = 120.0) -> None:
        self._server = _ThreadingServer(("127.0.0.1", 0), _TargetHandler)
        self._server.io_timeout = io_timeout  # type: ignore[attr-defined]
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="target", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def socks5_connect(sock: socket.socket, host: str, port: int) -> None:
    """RFC 1928 CONNECT, no auth, by IPv4 literal or name."""
    sock.sendall(b"\x05\x01\x00")
    if _recv_exact(sock, 2) != b"\x05\x00":
        raise ConnectionError("SOCKS5 greeting refused")
    try:
        addr = b"\x01" + socket.inet_aton(host)
    except OSError:
        addr = b"\x03" + bytes([len(host)]) + host.encode()
    sock.sendall(b"\x05\x01\x00" + addr + struct.pack("!H", port))
    reply = _recv_exact(sock, 4)
    if reply[1] != 0:
        raise ConnectionError(f"SOCKS5 reply {reply[1]:#04x}")
    atyp = reply[3]
    rest = {1: 4, 4: 16}.get(atyp)
    if rest is None:
        rest = _recv_exact(sock, 1)[0]
    _recv_exact(sock, rest + 2)


def transfer(
    entry_port: int,
    direction: str,
    nbytes: int,
    *,
    socks_target: int | None = None,
    timeout: float = 120.0,
) -> float:
    """Move ``nbytes`` through the tunnel entry at 127.0.0.1:``entry_port`` to or from the target server and
    return the seconds taken, from the TCP connect (channel open and SOCKS5 handshake included) until the
    target acknowledged the last uploaded byte (``up``) or the client read the last downloaded byte
    (``down``). ``socks_target``: the entry is a SOCKS5 proxy; CONNECT to 127.0.0.1:<socks_target>."""
    with socket.socket() as sock:
        sock.settimeout(timeout)
        t0 = time.perf_counter()
        sock.connect(("127.0.0.1", entry_port))
        if socks_target is not None:
            socks5_connect(sock, "127.0.0.1", socks_target)
        if direction == "up":
            sock.sendall(_HEADER.pack(b"U", nbytes))
            _send(sock, nbytes)
            if _recv_exact(sock, 1) != b"K":
                raise ConnectionError("bad acknowledgement")
        elif direction == "down":
            sock.sendall(_HEADER.pack(b"D", nbytes))
            _drain(sock, nbytes)
        else:
            raise ValueError(direction)
        return time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------- numbers


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def fmt(value: float | None, digits: int = 1) -> str:
    if value is None or value != value:  # NaN
        return "n/a"
    return f"{value:.{digits}f}"


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or a != a or b != b or b == 0:
        return None
    return a / b


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table (readable as plain text too)."""
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=False)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=False)) + " |"

    out = [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out.extend(line(r) for r in rows)
    return "\n".join(out)


def machine_notes() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError, KeyError, ValueError), open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "mem_gib": round(mem_kib / (1 << 20), 1),
        "kernel": os.uname().release,
        "load_1m": round(os.getloadavg()[0], 2),
    }
