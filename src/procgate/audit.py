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


def record(event: str, job: Job) -> None:
    """Log ``event`` (``queued``, ``running``, a final status, ``cancel_requested``)."""
    if not logger.isEnabledFor(logging.INFO):
        return
    logger.info(
        json.dumps(
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
            },
            ensure_ascii=False,
        )
    )
