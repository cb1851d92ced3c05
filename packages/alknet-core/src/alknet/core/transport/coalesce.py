"""Write coalescing: every ``write()`` made during one event-loop iteration reaches the socket in one send.

asyncssh writes each SSH packet with its own ``transport.write()``, and since 2.14 it puts an
``SSH_MSG_IGNORE`` packet in front of every packet it sends after the key exchange. Each of those writes is a
``send()`` system call when the socket's buffer is empty, so one small message costs two system calls and, on a
busy loopback, two wake-ups of the far side. :class:`CoalescingTransport` sits between the protocol and the
real transport: writes are collected and handed over together by a ``call_soon`` callback, i.e. at the start of
the next loop iteration. The bytes on the wire are the same; only the number of ``send()`` calls changes.

``close()``, ``write_eof()`` and ``abort()`` hand over what is collected first, so nothing written before them
is lost or reordered (``abort()`` still discards whatever the real transport could not send). Flow control is
the real transport's: it calls the protocol's ``pause_writing``/``resume_writing`` directly, and
:meth:`get_write_buffer_size` counts the collected bytes too.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["CoalescingTransport", "batched_writes"]


class _Batch(threading.local):
    """Per thread (one running loop each): the open :func:`batched_writes` blocks and what they collected."""

    def __init__(self) -> None:
        self.depth = 0
        self.pending: list[CoalescingTransport] = []


_BATCH = _Batch()


@contextmanager
def batched_writes() -> Iterator[None]:
    """Writes made inside the block reach their sockets together when it ends, in the same iteration.

    For writers that batch on their own (the call protocol's channel writer writes every frame of an
    iteration at once): waiting for the next iteration would only add latency.
    """
    b = _BATCH
    b.depth += 1
    try:
        yield
    finally:
        b.depth -= 1
        if not b.depth and b.pending:
            pending, b.pending = b.pending, []
            for t in pending:
                t._flush()


class CoalescingTransport(asyncio.Transport):
    """Wraps a connected transport; see the module docstring."""

    __slots__ = ("_buf", "_inner", "_loop", "_scheduled", "_size")

    def __init__(self, inner: asyncio.Transport, loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__()
        self._inner = inner
        self._loop = loop if loop is not None else asyncio.get_running_loop()
        self._buf: list[bytes] = []
        self._size = 0
        self._scheduled = False

    # -------------------------------------------------------------------------------------------- writing

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if self._inner.is_closing():
            self._inner.write(data)  # the real transport's own warning/ignore behaviour
            return
        self._buf.append(bytes(data) if not isinstance(data, bytes) else data)
        self._size += len(data)
        if not self._scheduled:
            self._scheduled = True
            if _BATCH.depth:
                _BATCH.pending.append(self)  # flushed when the batch ends
            else:
                self._loop.call_soon(self._flush)

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def _flush(self) -> None:
        self._scheduled = False
        buf = self._buf
        if not buf:
            return
        data = buf[0] if len(buf) == 1 else b"".join(buf)
        buf.clear()
        self._size = 0
        if self._inner.is_closing():
            return
        self._inner.write(data)

    def get_write_buffer_size(self) -> int:
        return self._size + self._inner.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._inner.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._inner.set_write_buffer_limits(high, low)

    def can_write_eof(self) -> bool:
        return self._inner.can_write_eof()

    def write_eof(self) -> None:
        self._flush()
        self._inner.write_eof()

    # ------------------------------------------------------------------------------------------- closing

    def is_closing(self) -> bool:
        return self._inner.is_closing()

    def close(self) -> None:
        self._flush()
        self._inner.close()

    def abort(self) -> None:
        self._flush()
        self._inner.abort()

    # ------------------------------------------------------------------------------------------- reading

    def is_reading(self) -> bool:
        return self._inner.is_reading()

    def pause_reading(self) -> None:
        self._inner.pause_reading()

    def resume_reading(self) -> None:
        self._inner.resume_reading()

    # ---------------------------------------------------------------------------------------- delegation

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._inner.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._inner.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._inner.get_protocol()

    def __repr__(self) -> str:
        return f"<CoalescingTransport {self._inner!r}>"
