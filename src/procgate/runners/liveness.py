"""Owner ids, heartbeats, and finding the jobs of runners that died.

Every runner has an owner id (host, pid, random part) that it stamps on the jobs it
takes, and a heartbeat thread that records it in the store and sweeps: the queued and
running jobs of an owner that stopped beating (or, on this host, whose process is gone)
become ``lost``, except those whose command has ``retry_on_worker_loss``: they go back to
the queue once, and the sweeping runner submits them again. The first sweep runs when the
runner opens, so a server restarted after a crash cleans up at once.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable

from procgate import process
from procgate.jobs import Job, JobStatus, Outcome
from procgate.stores import JobStore

logger = logging.getLogger("procgate")

#: Seconds between heartbeats (and sweeps) of one runner.
HEARTBEAT_INTERVAL = 5.0

#: Seconds without a heartbeat after which an owner on another host is taken for dead.
STALE_AFTER = 30.0


def new_owner() -> str:
    """``host:pid:random``: unique per runner object, and says where it lived."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def owner_is_dead(owner: str, last_beat: float | None, now: float, stale_after: float) -> bool:
    """Whether an owner is gone: its process is missing here, or its heartbeat is stale."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host == socket.gethostname() and pid_text.isdigit() and not _pid_alive(int(pid_text)):
        return True
    return last_beat is None or now - last_beat > stale_after


#: Submits a job again: ``resubmit(job_id)``.
Resubmit = Callable[[str], None]

#: The jobs a runner has in hand (queued in it, or running): ``holding() -> ids``.
Holding = Callable[[], set[str]]


def sweep_lost(
    store: JobStore,
    me: str,
    stale_after: float = STALE_AFTER,
    resubmit: Resubmit | None = None,
) -> int:
    """Deal with the active jobs of dead owners; return how many became ``lost``.

    On this host, what is left of their children's process groups is killed first (the
    process tag each job recorded tells which group, and that it is still the same one).
    With ``resubmit``, the jobs that may run (again) are queued again and handed to it:
    those that never started, and those with ``retry_on_worker_loss``, once. The rest
    become ``lost``.
    """
    beats = store.heartbeats()
    now = time.time()
    lost = 0
    for owner in store.active_owners() - {me}:
        if not owner_is_dead(owner, beats.get(owner), now, stale_after):
            continue
        killed = _kill_leftovers(store.active_jobs(owner), owner)
        if resubmit is not None:
            for job_id in store.requeue_lost(owner):
                logger.warning("running job %s again: its runner %s died", job_id, owner)
                _resubmit(store, resubmit, job_id, owner)
        where = (
            "what was left of its process group was killed"
            if killed
            else "a process it started may still be running on its host"
        )
        count = store.mark_lost(
            owner, f"lost: its runner ({owner}) stopped before the job finished; {where}"
        )
        if count:
            logger.warning("marked %d job(s) of dead runner %s as lost", count, owner)
        lost += count
    return lost


def sweep_stranded(
    store: JobStore,
    me: str,
    holding: Holding,
    suspects: set[str],
    resubmit: Resubmit | None = None,
) -> set[str]:
    """Deal with the active jobs of a live owner ``me`` that it no longer has in hand.

    A runner that could not record a start or a finish (the store was unavailable for
    longer than ``journal.RETRY_FOR``) lets go of the job. Such a job is only taken for
    stranded when it was already loose at the previous sweep (``suspects``): a job is
    stored a moment before its runner takes it. A stranded job that never started is
    handed to ``resubmit``; one that started is killed (what is left of its group) and
    becomes ``lost``. Returns the suspects for the next sweep.
    """
    mine = store.active_jobs(me)
    held = holding()
    loose = {job.id for job in mine if job.id not in held}
    for job in mine:
        if job.id not in loose or job.id not in suspects:
            continue
        if job.status is JobStatus.QUEUED and resubmit is not None:
            logger.warning("job %s was left queued by its runner: submitting it again", job.id)
            resubmit(job.id)
            continue
        killed = _kill_leftovers([job], me)
        where = "; what was left of its process group was killed" if killed else ""
        if store.finish(
            job.id,
            Outcome(
                JobStatus.LOST,
                error="lost: its runner could not record how it ended (the store was "
                f"unavailable){where}",
            ),
        ):
            logger.warning("marked job %s as lost: its runner let go of it", job.id)
    return loose - suspects


def _kill_leftovers(jobs: Iterable[Job], owner: str) -> bool:
    """SIGKILL what is left of the jobs' process groups, if their owner ran on this host."""
    if owner.partition(":")[0] != socket.gethostname():
        return False
    killed = False
    for job in jobs:
        if job.process is not None and process.kill_tagged(job.process):
            logger.warning("killed what was left of job %s's processes", job.id)
            killed = True
    return killed


def _resubmit(store: JobStore, resubmit: Resubmit, job_id: str, owner: str) -> None:
    try:
        resubmit(job_id)
    except Exception:
        logger.exception("could not submit job %s again", job_id)
        store.finish(
            job_id,
            Outcome(
                JobStatus.LOST,
                error=f"lost: its runner ({owner}) died, and it could not be submitted again",
            ),
        )


class Heartbeat:
    """A daemon thread that beats for ``owner`` and sweeps lost jobs every ``interval``.

    With ``holding``, it also sweeps this owner's own jobs that its runner let go of
    (``sweep_stranded``).
    """

    def __init__(
        self,
        store: JobStore,
        owner: str,
        *,
        interval: float = HEARTBEAT_INTERVAL,
        stale_after: float = STALE_AFTER,
        resubmit: Resubmit | None = None,
        holding: Holding | None = None,
    ) -> None:
        self.store = store
        self.owner = owner
        self.interval = interval
        self.stale_after = stale_after
        self.resubmit = resubmit
        self.holding = holding
        self._suspects: set[str] = set()  # this owner's loose jobs at the last sweep
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Beat and sweep once now, then keep doing it in the background."""
        self._beat()
        self._thread = threading.Thread(
            target=self._run, name=f"procgate-heartbeat-{self.owner}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._beat()

    def _beat(self) -> None:
        try:
            self.store.heartbeat(self.owner)
            sweep_lost(self.store, self.owner, self.stale_after, self.resubmit)
            if self.holding is not None:
                self._suspects = sweep_stranded(
                    self.store, self.owner, self.holding, self._suspects, self.resubmit
                )
        except Exception:  # a store hiccup must not kill the thread: try again next time
            logger.exception("heartbeat of %s failed", self.owner)


def _pid_alive(pid: int) -> bool:
    """Whether a process runs; a zombie (exited, not yet reaped by anyone) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            state = stat.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):  # no /proc here: trust kill()
        return True
    return state not in (b"Z", b"X")
