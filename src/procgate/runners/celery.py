"""CeleryRunner: jobs run by Celery workers on any host (``pip install 'procgate[celery]'``).

The API processes put a task message holding only the job id on a Celery queue; a worker
(``procgate worker --config ...``, on any host) takes it, reads the job from the shared
store, runs it with the same process handling as the local runners, and writes its output
and outcome back to the store. The store (Redis for several hosts) is the only channel
between them: status, output, and cancel requests all go through it.

Acknowledgement, deliberately early: a worker acknowledges a message when it starts the
job, not when the job ends (Celery's default; not ``acks_late``). With ``acks_late``, a
job whose worker vanished would be delivered again by the broker, but with Redis only
after ``visibility_timeout``, any job running longer than that would be delivered twice
while it still runs, and ``reject_on_worker_lost`` only covers the death of a prefork
child. Instead, every worker beats in the store like every runner
(``procgate.runners.liveness``): the jobs of a worker that stopped beating, or whose
process is gone on this host, become ``lost`` within ``stale_after`` seconds, whatever the
broker; a command with ``retry_on_worker_loss`` has its job queued and sent again, once.
The store makes every delivery idempotent: only one worker can move a job from ``queued``
to ``running``, so a message delivered twice runs its job once.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
from collections.abc import Mapping
from typing import Any

from procgate.commands import Command, resolve_program
from procgate.errors import ConfigError, RunnerClosed
from procgate.jobs import Job, JobStatus, Outcome
from procgate.process import CancelCheck, OutputCallback, StartCallback
from procgate.runners.liveness import HEARTBEAT_INTERVAL, STALE_AFTER
from procgate.runners.sync import Execute, SyncRunner, execute_here, run_job

try:
    import celery  # type: ignore[import-untyped]  # no hints
    import kombu.exceptions
except ImportError:  # pragma: no cover - depends on the installed extras
    celery = None

logger = logging.getLogger("procgate")

#: The name of the one task procgate sends: ``procgate.run(job_id)``.
TASK_NAME = "procgate.run"

#: The queue jobs go to when neither the runner nor the command names one.
DEFAULT_QUEUE = "procgate"

#: Seconds a message a worker took but had not started may stay unacknowledged (Redis
#: broker) before it goes back to the queue: a worker that died leaves such messages.
VISIBILITY_TIMEOUT = 300


def make_celery(broker_url: str, queue: str = DEFAULT_QUEUE) -> Any:
    """A Celery app for procgate's task on ``broker_url`` (``redis://``, ``amqp://``...).

    No result backend: results live in procgate's store. Workers take one message per
    free thread (``worker_prefetch_multiplier = 1``), so a message waits in the broker,
    not in a busy worker.
    """
    if celery is None:
        raise ConfigError("CeleryRunner needs Celery: pip install 'procgate[celery]'")
    app = celery.Celery("procgate", broker=broker_url, set_as_current=False)
    app.conf.update(
        task_default_queue=queue,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=False,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT},
        worker_hijack_root_logger=False,
    )
    return app


class CeleryRunner(SyncRunner):
    """Sends each job to a Celery queue; ``procgate worker`` processes run them.

    ``app_or_broker_url`` is a Celery app of your own or a broker URL. Jobs go to
    ``queue``, or to their command's ``queue``. The store must be one the workers share
    (Redis across hosts; SQLite only when they all run on one host).

    In ``procgate worker`` the same class is the worker's side: ``run(job_id, commands)``
    runs a job with the worker host's commands.
    """

    kind = "celery"
    runs_here = False  # the workers resolve the commands' programs on their hosts

    def __init__(
        self,
        app_or_broker_url: Any,
        *,
        queue: str = DEFAULT_QUEUE,
        heartbeat: float = HEARTBEAT_INTERVAL,
        stale_after: float = STALE_AFTER,
    ) -> None:
        super().__init__(heartbeat=heartbeat, stale_after=stale_after)
        self._own_app = isinstance(app_or_broker_url, str)
        if isinstance(app_or_broker_url, str):
            self.app = make_celery(app_or_broker_url, queue)
        elif app_or_broker_url is None:
            raise ConfigError("CeleryRunner needs a Celery app or a broker URL ([runner] broker)")
        else:
            self.app = app_or_broker_url
        self.queue = queue
        self._resolved: dict[str, Command | str] = {}  # worker side: command or why not
        self._lock = threading.Lock()

    def submit(
        self,
        job_id: str,
        *,
        inline: bool = False,
        queue: str | None = None,
        until: float | None = None,
    ) -> None:
        """Send the job's id to its queue. ``RunnerClosed`` (503) when the broker fails."""
        if self._halt.is_set():
            raise RunnerClosed("the runner is shutting down")
        try:
            self.app.send_task(TASK_NAME, args=[job_id], queue=queue or self.queue)
        except (kombu.exceptions.KombuError, OSError) as exc:
            logger.error("could not send job %s to the broker: %s", job_id, exc)
            raise RunnerClosed(f"the job queue is unavailable: {exc}") from None

    def close(self) -> None:
        """Stop beating; jobs running in this process (a worker) see the halt and stop."""
        super().close()
        if self._own_app:  # its broker connections; an app passed in is its owner's
            self.app.close()

    def _resubmit(self, job_id: str) -> None:
        store = self._store
        if store is None:
            return
        self.submit(job_id, queue=store.get(job_id, output=False).spec.queue)

    # -- the worker's side --------------------------------------------------------------

    def run(self, job_id: str, commands: Mapping[str, Command], node: str) -> None:
        """Run a job a task brought, in this (worker) process, as ``node``."""
        store = self._store
        if store is None:
            raise RuntimeError("CeleryRunner.open(store) was not called")
        self._hold(job_id)
        try:
            run_job(
                store,
                job_id,
                self._halt,
                self._on_finish,
                self._executor(commands, node),
                owner=self.owner,
            )
        finally:
            self._release(job_id)

    def take(self, job_id: str) -> None:
        """A worker received the job's message: make the job this worker's while queued.

        Celery holds a few received messages per worker before it runs them. If the
        worker dies then, the broker gives those messages back only after its visibility
        timeout (300 s with Redis); but the store knows they were this worker's, so the
        sweep that finds it dead sends them again within ``stale_after`` seconds. Starting
        stays idempotent: whichever delivery comes first runs the job, once.
        """
        store = self._store
        if store is None:
            raise RuntimeError("CeleryRunner.open(store) was not called")
        self._hold(job_id)
        try:
            store.claim(job_id, self.owner)
        except Exception as exc:  # JobNotFound, StoreUnavailable: run() will say so
            logger.warning("could not claim job %s for this worker: %s", job_id, exc)

    def _executor(self, commands: Mapping[str, Command], node: str) -> Execute:
        def execute(
            job: Job, on_output: OutputCallback, cancelled: CancelCheck, on_start: StartCallback
        ) -> Outcome:
            if job.command is None:  # POST /run: the API host resolved and checked it
                return execute_here(job, on_output, cancelled, on_start)
            command = self._command(commands, job.command)
            if isinstance(command, str):
                return Outcome(JobStatus.ERROR, error=f"worker {node}: {command}")
            try:
                spec = _respec(command, job)
            except Exception as exc:  # the worker's policy refused what the API's allowed
                return Outcome(JobStatus.ERROR, error=f"worker {node}: {exc}")
            return execute_here(dataclasses.replace(job, spec=spec), on_output, cancelled, on_start)

        return execute

    def _command(self, commands: Mapping[str, Command], name: str) -> Command | str:
        """The command with its program resolved on this host, or why it cannot run here."""
        with self._lock:
            found = self._resolved.get(name)
            if found is not None:
                return found
            command = commands.get(name)
            if command is None:
                found = f"command {name!r} is not configured on this worker"
            elif command.shell:
                found = command
            else:
                program = resolve_program(command.argv[0], command.base_env["PATH"])
                if program is None:
                    found = f"command {name!r}: program {command.argv[0]!r} not found here"
                elif command.cwd is not None and not os.path.isdir(command.cwd):
                    found = f"command {name!r}: cwd {command.cwd!r} is not a directory here"
                else:
                    found = dataclasses.replace(command, argv=(program, *command.argv[1:]))
            self._resolved[name] = found
            return found


def _respec(command: Command, job: Job) -> Any:
    """The job's spec made again from this host's command: program, cwd, env, limits.

    What the request chose is kept: args, stdin, timeout, and the env it set (the keys
    the command allows, and ``PROCGATE_*`` of webhooks).
    """
    request_env = {
        key: value
        for key, value in job.spec.env.items()
        if key in command.allow_env or key.startswith("PROCGATE_")
    }
    spec = command.spec(job.args, env={}, stdin=job.spec.stdin, timeout=job.spec.timeout)
    return dataclasses.replace(
        spec,
        env={**spec.env, **request_env},
        stdin_path=job.spec.stdin_path,
        files_dir=job.spec.files_dir,
    )


def node_name(name: str | None = None) -> str:
    """A Celery node name: ``name`` if given (``%h`` is the host name, as in Celery's
    ``--hostname``), else ``procgate-<pid>@<host>``."""
    host = socket.gethostname()
    return name.replace("%h", host) if name else f"procgate-{os.getpid()}@{host}"
