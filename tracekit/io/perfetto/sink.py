"""The sink of the Perfetto writer: framed packets written in order, plain or deflated into
``compressed_packets`` bundles, with encoding and deflating handed to worker threads."""

from __future__ import annotations

import collections
import concurrent.futures
import os
from collections.abc import Callable
from typing import IO, Any

import numpy as np

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from tracekit.io.perfetto import encode as wire


class Sink:
    """Writes framed packets in order, optionally bundled into deflated ``compressed_packets``
    chunks of about ``chunk_bytes`` (whole packets each).

    Work is handed to worker threads: deflating chunks (the zlib stream library runs without
    the GIL) and encoding batches of rows (:meth:`write_encoded`), while the writer
    prepares the next batch. Results are written in submission order and chunk boundaries depend
    only on the bytes, so the file does not depend on thread timing. At most about
    ``max_pending_bytes`` of packets are in flight: memory stays bounded whatever the trace
    length."""

    def __init__(self, f: IO[bytes], compress: bool, chunk_bytes: int = 1 << 20,
                 max_pending_bytes: int = 16 << 20) -> None:
        self.f = f
        self.compress = compress
        self.chunk_bytes = chunk_bytes
        self.parts: list[bytes | np.ndarray] = []
        self.size = 0
        workers = max(1, min(8, (os.cpu_count() or 1)))
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers)
        self.max_pending_bytes = max_pending_bytes
        self.pending: collections.deque = collections.deque()  # (future or ready parts, size)
        self.pending_bytes = 0

    def write(self, data: bytes | np.ndarray) -> None:
        """Append whole packets (bytes or a uint8 array, which must not change afterwards)."""
        n = len(data)
        if not n:
            return
        self.parts.append(data)
        self.size += n
        if self.size >= self.chunk_bytes:
            self._flush_chunk()

    def write_encoded(self, job: Callable[[bytes, bool, int], list], size_hint: int) -> None:
        """Append what ``job(prefix, compress, chunk_bytes)`` returns, run on a worker thread: the
        parts to write for ``prefix`` (the packets written before, which go first) and the
        packets the job encodes, deflated into bundles of about ``chunk_bytes`` when
        ``compress`` (see :func:`tracekit.io.perfetto.encode.slice_writer`). A chunk ends after
        them. ``size_hint``: about how many bytes the job encodes."""
        prefix = b"".join(self.parts)
        self.parts, self.size = [], 0
        self._push(self.pool.submit(job, prefix, self.compress, self.chunk_bytes), len(prefix) + size_hint)

    def packet(self, p: pb.TracePacket) -> None:
        self.write(wire.frame(p))

    def _flush_chunk(self) -> None:
        if not self.parts:
            return
        parts, size = self.parts, self.size
        self.parts, self.size = [], 0
        if not self.compress:
            self._push(parts, size)
        else:
            self._push(self.pool.submit(_bundle, parts[0] if len(parts) == 1 else b"".join(parts)), size)

    def _push(self, item: Any, size: int) -> None:
        self.pending.append((item, size))
        self.pending_bytes += size
        while self.pending_bytes > self.max_pending_bytes:
            self._drain_one()

    def _drain_one(self) -> None:
        item, size = self.pending.popleft()
        for part in (item.result() if isinstance(item, concurrent.futures.Future) else item):
            self.f.write(part)
        self.pending_bytes -= size

    def close(self) -> None:
        try:
            self._flush_chunk()
            while self.pending:
                self._drain_one()
        finally:
            self.pool.shutdown()


def _bundle(raw: bytes | np.ndarray) -> list:
    """A framed ``compressed_packets`` packet holding ``raw``."""
    return [wire.compressed_frame(raw)]
