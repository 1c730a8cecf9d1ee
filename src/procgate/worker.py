"""``procgate worker``: a Celery worker that runs a config file's jobs (``procgate[celery]``).

It builds the config's Gate (its store and its commands, whose programs are resolved
here, on the worker's host), registers procgate's one task on the runner's Celery app,
and runs Celery's worker with a thread pool: a job mostly waits on its child, so threads
are the right pool, as in the ThreadRunner.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from celery.signals import task_received  # type: ignore[import-untyped]  # no hints

from procgate._logging import log_to_stderr
from procgate.config import Config
from procgate.errors import ConfigError
from procgate.runners.celery import TASK_NAME, CeleryRunner, node_name


def run_worker(
    config: Config,
    *,
    concurrency: int | None = None,
    queues: Sequence[str] = (),
    hostname: str | None = None,
) -> int:
    """Consume ``queues`` (default: the runner's queue) until SIGTERM; returns its status.

    SIGTERM is Celery's warm shutdown: no new jobs are taken, running ones finish. A second
    SIGTERM (or SIGQUIT) stops at once; the jobs then running become ``lost`` (or run
    again, with ``retry_on_worker_loss``) when another runner's sweep sees this worker gone.
    """
    if config.runner.get("kind") != "celery":
        raise ConfigError('procgate worker needs [runner] kind = "celery" in the config')
    threads = concurrency if concurrency is not None else config.runner.get("concurrency", 8)
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ConfigError("--concurrency (or [runner] concurrency) must be at least 1")
    log_to_stderr()
    gate = config.build()
    try:
        runner = gate.runner
        if not isinstance(runner, CeleryRunner):  # pragma: no cover - kind checked above
            raise ConfigError("procgate worker needs the celery runner")
        node = node_name(hostname)
        app = runner.app

        @app.task(name=TASK_NAME, ignore_result=True)  # type: ignore[untyped-decorator]
        def run(job_id: str) -> None:
            runner.run(job_id, gate.commands, node)

        def received(sender: Any = None, request: Any = None, **_: Any) -> None:
            """A message arrived (it may wait for a free thread): the job is ours now."""
            if request is not None and request.name == TASK_NAME and request.args:
                runner.take(str(request.args[0]))

        task_received.connect(received, weak=False)

        names = list(queues) or [runner.queue]
        argv = [
            "worker",
            "--pool=threads",
            f"--concurrency={threads}",
            f"--queues={','.join(names)}",
            f"--hostname={node}",
            "--without-gossip",  # cancels and status go through the store, not the broker
            "--without-mingle",
            f"--loglevel={os.environ.get('PROCGATE_LOG_LEVEL', 'INFO').upper()}",
        ]
        try:
            app.worker_main(argv)
        finally:
            task_received.disconnect(received)
    finally:
        gate.close()
    return 0
