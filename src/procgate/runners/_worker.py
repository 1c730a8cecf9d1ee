"""A ProcessRunner worker: ``python -m procgate.runners._worker FD``.

It reads ``("run", spec)``, ``("cancel",)`` and ``("stop",)`` messages from the socket
``FD`` and runs one job at a time, reporting ``("started", tag)``, ``("out", stream, data)``
and ``("done", ...)``.
When the server goes away (end of file), it stops its child and exits.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from multiprocessing.connection import Connection

from procgate import process
from procgate.jobs import JobStatus, Outcome, Spec


def main(fd: int) -> None:
    conn = Connection(fd)
    # Ctrl-C reaches the whole foreground process group; the server decides what stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cancel = threading.Event()
    runner: threading.Thread | None = None
    try:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):  # the server is gone
                break
            if message[0] == "run":
                if runner is not None:
                    runner.join()
                cancel.clear()
                runner = threading.Thread(
                    target=_execute, args=(conn, Spec(*message[2]), cancel), daemon=True
                )
                runner.start()
            elif message[0] == "cancel":
                cancel.set()
            else:
                break
    finally:
        cancel.set()
        if runner is not None:
            runner.join()
        conn.close()


def _execute(conn: Connection, spec: Spec, cancel: threading.Event) -> None:
    try:
        outcome = process.execute(
            spec,
            on_output=lambda stream, data: conn.send(("out", stream, data)),
            cancelled=cancel.is_set,
            on_start=lambda tag: conn.send(("started", tag)),
        )
    except Exception as exc:  # report it: the server's job must not stay running
        outcome = Outcome(JobStatus.ERROR, error=f"internal error in procgate: {exc}")
    with contextlib.suppress(OSError):
        conn.send(
            (
                "done",
                outcome.status.value,
                outcome.returncode,
                outcome.error,
                outcome.stdout_truncated,
                outcome.stderr_truncated,
            )
        )


if __name__ == "__main__":
    main(int(sys.argv[1]))
