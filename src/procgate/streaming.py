"""Following a job's output as it is written: raw bytes, byte offsets, Server-Sent Events.

Everything here reads the store only, so a follower may sit in any process or on any
host; a slow or gone follower holds nothing but its own server thread.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from procgate.errors import JobNotFound
from procgate.jobs import Chunk, Job, as_text
from procgate.stores import JobStore

#: Seconds an SSE stream may stay silent before it sends a comment line (proxies close idle
#: connections; the write also tells the server whether the client is still there).
KEEPALIVE = 15.0


def follow(store: JobStore, job_id: str, stream: str, idle: float = KEEPALIVE) -> Iterator[bytes]:
    """The stream's bytes so far, then new ones as they are written, until the job ends.

    It starts with an empty chunk, so the server sends the headers at once even when the
    job is silent (a proxy would time out waiting for them).
    """
    yield b""
    for chunk, _ in _chunks(store, job_id, idle):
        if chunk is not None and chunk.stream == stream:
            yield chunk.data


@dataclass(frozen=True, slots=True)
class Slice:
    """What ``read_from`` found: bytes from an offset, the next offset, and whether that
    is all the stream will ever hold."""

    data: bytes
    next_offset: int
    complete: bool
    job: Job


def read_from(store: JobStore, job_id: str, stream: str, offset: int, wait: float) -> Slice:
    """A stream's bytes from ``offset``; with nothing new yet, wait up to ``wait`` seconds."""
    while True:
        job = store.get(job_id, output=False)  # the status first: then the chunks are current
        chunks = store.read_output(job_id)
        parts = [
            c.data[max(0, offset - c.offset) :]
            for c in chunks
            if c.stream == stream and c.offset + len(c.data) > offset
        ]
        data = b"".join(parts)
        if data or job.status.finished or wait <= 0:
            return Slice(data, offset + len(data), job.status.finished, job)
        store.wait_output(job_id, chunks[-1].index if chunks else 0, wait)
        wait = 0  # one wait at most: then answer whatever there is


def events(
    store: JobStore,
    job_id: str,
    render: Callable[[Job], dict[str, Any]],
    last_event_id: int = 0,
    idle: float = KEEPALIVE,
) -> Iterator[bytes]:
    """Server-Sent Events: ``status`` on each change, ``output`` per chunk, then ``end``.

    Each event's id is the index of the last chunk sent, so a client that reconnects with
    ``Last-Event-ID`` gets the chunks after it, no gap and no repeat. The ``end`` event
    carries the whole job, as ``render`` makes it.
    """
    status = None
    after = last_event_id
    for chunk, job in _chunks(store, job_id, idle, after):
        # A final status waits until the output before it has been sent.
        changed = job.status is not status and not (chunk is not None and job.status.finished)
        if changed:
            status = job.status
            yield _event("status", after, {"status": status.value})
        if chunk is not None:
            after = chunk.index
            yield _event("output", after, _chunk_json(chunk))
        elif job.status.finished:
            try:
                final = store.get(job_id)
            except JobNotFound:
                final = job
            yield _event("end", after, render(final))
        elif not changed:
            yield b": keepalive\n\n"


def _chunks(
    store: JobStore, job_id: str, idle: float, after: int = 0
) -> Iterator[tuple[Chunk | None, Job]]:
    """Every chunk past ``after`` with the job as last read; ``(None, job)`` when there is
    no chunk to carry news: the status changed, ``idle`` seconds passed, or the end.

    The job is read before its chunks: a runner writes all output before it finishes a
    job, so once a read shows the job finished, the chunks read after it are all of them.
    """
    status = None
    while True:
        try:
            job = store.get(job_id, output=False)
            chunks = store.read_output(job_id, after)
        except JobNotFound:  # deleted or evicted while we followed it
            return
        for chunk in chunks:
            after = chunk.index
            yield chunk, job
        if job.status.finished:
            yield None, job
            return
        if job.status is not status and not chunks:
            yield None, job
        status = job.status
        if not chunks:
            started = time.monotonic()
            try:
                store.wait_output(job_id, after, idle)
            except JobNotFound:
                return
            if time.monotonic() - started >= idle:
                yield None, job  # silence: time for a keepalive


def _chunk_json(chunk: Chunk) -> dict[str, Any]:
    data, encoding = as_text(chunk.data), "utf-8"
    if data is None:
        data, encoding = base64.b64encode(chunk.data).decode("ascii"), "base64"
    return {"stream": chunk.stream, "data": data, "offset": chunk.offset, "encoding": encoding}


def _event(name: str, event_id: int, payload: dict[str, Any]) -> bytes:
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"id: {event_id}\nevent: {name}\ndata: {data}\n\n".encode()
