"""The audit trail: one JSON log line per job transition, on the ``procgate.audit`` logger.

Lines carry the job id, command, argv, token id, client address, status, returncode and
duration: never a token, a secret, an environment value or stdin. Route them like any
stdlib logging (``logging.getLogger("procgate.audit")``): to a file, syslog, or stderr.
"""

from __future__ import annotations

import json
import logging

from procgate.jobs import Job, format_time, utcnow

logger = logging.getLogger("procgate.audit")


def record(
    event: str, job: Job, *, by_token: str | None = None, by_client: str | None = None
) -> None:
    """Log ``event`` (``queued``, ``running``, a final status, ``cancel_requested``,
    ``deleted``); ``by_token`` and ``by_client`` say who asked, when not the job's creator.
    """
    if not logger.isEnabledFor(logging.INFO):
        return
    actor = (
        {}
        if by_token is None and by_client is None
        else {
            "by_token": by_token,
            "by_client": by_client,
        }
    )
    message = json.dumps(
        {
            "time": format_time(utcnow()),
            "event": event,
            "job": job.id,
            "command": job.command,
            "argv": list(job.spec.argv),
            "token": job.token_id,
            "client": job.client,
            "status": job.status.value,
            "returncode": job.returncode,
            "duration": job.duration,
            **actor,
        },
        ensure_ascii=False,
    )
    # A record made directly: logging's search of the stack for the caller's file and line
    # (which no audit line shows) was a third of the cost of each of a job's three lines.
    logger.handle(logger.makeRecord(logger.name, logging.INFO, __file__, 0, message, (), None))
