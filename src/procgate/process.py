"""Start, drain, time out, kill and reap one child process.

This is the only module that touches ``subprocess`` and signals. A child always runs in a
session of its own, so one signal to its process group reaches everything it started; the
child is always reaped, whatever happens.
"""

from __future__ import annotations

import contextlib
import errno
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from procgate.jobs import JobStatus, Outcome, Spec

#: Bytes read from a pipe at a time.
CHUNK = 64 << 10

#: How often (seconds) a running child is checked for cancellation and its deadline.
POLL_INTERVAL = 0.05

#: How long (seconds) output pipes may stay open after the main process exited, before the
#: rest of its process group is killed: a job ends when its main process ends.
LINGER = 1.0

OutputCallback = Callable[[str, bytes], None]
CancelCheck = Callable[[], bool]
#: ``on_start(tag)``: the child started; ``tag`` finds its process group again later
#: (``kill_tagged``), even from another process after this one died.
StartCallback = Callable[[str], None]


def execute(
    spec: Spec,
    *,
    on_output: OutputCallback,
    cancelled: CancelCheck,
    on_start: StartCallback | None = None,
    poll_interval: float = POLL_INTERVAL,
) -> Outcome:
    """Run ``spec`` to completion and say how it ended.

    ``on_output(stream, data)`` receives the kept bytes of ``"stdout"`` and ``"stderr"`` as
    they arrive, at most ``spec.max_output`` bytes per stream; the rest is read and
    discarded so the child never blocks on a full pipe. ``cancelled()`` is asked at most
    every ``poll_interval`` seconds. A timeout or a cancel sends SIGTERM to the whole
    process group, then SIGKILL after ``spec.kill_grace`` seconds. ``on_start(tag)`` is
    called once the child runs, with its ``process_tag``.
    """
    started = start(
        spec,
        on_output=on_output,
        cancelled=cancelled,
        on_start=on_start,
        poll_interval=poll_interval,
    )
    return started if isinstance(started, Outcome) else started.run_to_end()


def start(
    spec: Spec,
    *,
    on_output: OutputCallback,
    cancelled: CancelCheck,
    on_start: StartCallback | None = None,
    poll_interval: float = POLL_INTERVAL,
) -> Supervisor | Outcome:
    """Start ``spec``'s child (``execute`` says how it is supervised) and return its
    ``Supervisor``, to ``run``; the Outcome at once when it could not start."""
    try:
        stdin: Any = subprocess.PIPE if spec.stdin else subprocess.DEVNULL
        if spec.stdin_path is not None:
            stdin = open(spec.stdin_path, "rb")  # noqa: SIM115 - closed below, after Popen
        proc = subprocess.Popen(
            list(spec.argv),
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(spec.env),
            cwd=spec.cwd,
            start_new_session=True,
            user=spec.user,
            group=spec.group,
            extra_groups=[] if spec.user is not None else None,
        )
    except OSError as exc:
        return Outcome(JobStatus.ERROR, error=f"could not start {spec.argv[0]}: {exc}")
    finally:
        if spec.stdin_path is not None and not isinstance(stdin, int):
            stdin.close()  # the child has its own copy
    supervisor = Supervisor(proc, spec, on_output, cancelled, poll_interval)
    if on_start is not None:
        tag = process_tag(proc.pid, just_started=True)
        if tag is not None:
            try:
                on_start(tag)
            except BaseException:
                supervisor.abandon()  # never leave a child nobody supervises
                raise
    return supervisor


def process_tag(pid: int, *, just_started: bool = False) -> str | None:
    """``boot-id:pid:start-ticks`` of a live process, or None where /proc cannot say.

    A pid is reused once its process is gone; the boot id and the start time (clock
    ticks after boot) are not, so a tag names one process of one boot. ``just_started``:
    the caller started the process a moment ago, so the boot clock gives its start time
    to within milliseconds, at a fraction of the cost of reading /proc (once per job).
    """
    if _BOOT_ID is None:
        return None
    if just_started:
        start: int | None = int(time.clock_gettime(time.CLOCK_BOOTTIME) * _TICKS)
    else:
        start = _start_ticks(pid)
    if start is None:
        return None
    return f"{_BOOT_ID}:{pid}:{start}"


def kill_tagged(tag: str) -> bool:
    """SIGKILL the process group of the process ``tag`` names, if it is still its group.

    The leader's pid is its group id (each child is a session leader). Where the leader
    still runs, its start time must be the tag's, to within ``START_TOLERANCE`` seconds (a
    pid comes round again only after the whole pid range was used, never within a
    second); where it is gone, the group id cannot have been handed to a new process while
    any member of the group lives (the kernel does not reuse a pid still in use as a
    group id), so what is left is its group. On another boot nothing is touched. True
    when a signal was sent.
    """
    boot, _, rest = tag.partition(":")
    pid_text, _, start_text = rest.partition(":")
    if boot != _BOOT_ID or not pid_text.isdigit() or not start_text.isdigit():
        return False
    pid = int(pid_text)
    start = _start_ticks(pid)
    if start is not None and abs(start - int(start_text)) > START_TOLERANCE * _TICKS:
        return False  # the pid is another process's now
    return signal_group(pid, signal.SIGKILL)


def _start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks after boot (/proc/PID/stat field 22).

    Plain ``os.open`` and ``os.read``: this runs once per job, and a buffered file object
    costs several times more.
    """
    try:
        descriptor = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
        try:
            stat = os.read(descriptor, 4096)
        finally:
            os.close(descriptor)
        return int(stat.rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _read_boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as boot:
            return boot.read().strip()
    except OSError:
        return None


#: This boot's id: a process tag made on another boot names nothing that runs now.
_BOOT_ID = _read_boot_id()

#: Clock ticks per second: the unit of start times in /proc.
_TICKS = os.sysconf("SC_CLK_TCK")

#: Seconds a process's start time may differ from its tag's and still be that process.
START_TOLERANCE = 1.0


def longest(spec: Spec) -> float | None:
    """Seconds within which ``execute(spec)`` has surely returned; None without a timeout.

    The timeout, the grace before SIGKILL, the two ``LINGER`` periods for leftovers of the
    process group, and a second for polling and the store.
    """
    if spec.timeout is None:
        return None
    return spec.timeout + spec.kill_grace + 2 * LINGER + 1.0


def start_python(module: str) -> tuple[subprocess.Popen[bytes], socket.socket]:
    """Start ``python -m module FD``, FD being one end of a new socket pair; return the other.

    The helper inherits this interpreter and its ``sys.path`` (so a source checkout works),
    and stays in the server's process group: it dies with the server.
    """
    ours, theirs = socket.socketpair()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, str(theirs.fileno())],
            stdin=subprocess.DEVNULL,
            pass_fds=[theirs.fileno()],
            env=env,
        )
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    return proc, ours


def reap(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait up to ``timeout`` seconds for a helper to exit, then SIGKILL it; always reap."""
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def signal_group(pgid: int, signum: int) -> bool:
    """Signal a whole process group; False when nothing of it is left (ESRCH)."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member changed its uid: nothing more we may do to it
        return False
    return True


class Supervisor:
    """The loop around one child: pipes, deadline, cancel, escalation, reaping.

    ``run(until)`` may stop at ``until`` with the child still running, and be called
    again later, from another thread: a request can run a job in its own thread for as
    long as it waits, then leave the rest to a runner thread.
    """

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        spec: Spec,
        on_output: OutputCallback,
        cancelled: CancelCheck,
        poll_interval: float,
    ) -> None:
        self.proc = proc
        self.spec = spec
        self.on_output = on_output
        self.cancelled = cancelled
        self.poll_interval = poll_interval
        self.kept = {"stdout": 0, "stderr": 0}
        self.truncated = {"stdout": False, "stderr": False}
        self.stdin_view = memoryview(spec.stdin)
        self.reason: JobStatus | None = None  # TIMED_OUT or CANCELLED once decided
        self.kill_at: float | None = None  # when SIGTERM escalates to SIGKILL
        self.exited_at: float | None = None  # when the main process was seen gone
        self.swept_at: float | None = None  # when leftovers of the group were SIGKILLed
        self.pidfd: int | None = None  # readable once the child exits (Linux >= 5.3)
        self.selector: selectors.BaseSelector | None = None  # from the first run()
        self.started = time.monotonic()
        self.deadline = self.started + spec.timeout if spec.timeout is not None else None
        self.next_check = self.started + poll_interval  # the runner saw no cancel at start

    def abandon(self) -> None:
        """Kill and reap the child without supervising it (setup failed)."""
        self._finalise(selectors.DefaultSelector())

    def run(self, until: float | None = None) -> Outcome | None:
        """Supervise the child until it is done and say how it ended; None when the
        ``until`` (a ``time.monotonic()`` time) came first: call ``run`` again later."""
        selector = self.selector
        try:
            if selector is None:
                selector = self.selector = self._watch()
            if not self._loop(selector, until):
                return None
        except BaseException:
            self._finalise(selector or selectors.DefaultSelector())
            raise
        self._finalise(selector)
        return self._outcome()

    def run_to_end(self) -> Outcome:
        """``run`` with no ``until``: supervise the child until it is done."""
        outcome = self.run()
        assert outcome is not None  # noqa: S101 - run() without ``until`` runs to the end
        return outcome

    def _watch(self) -> selectors.BaseSelector:
        selector = selectors.DefaultSelector()
        proc = self.proc
        for pipe, stream in ((proc.stdout, "stdout"), (proc.stderr, "stderr")):
            if pipe is not None:
                selector.register(pipe, selectors.EVENT_READ, stream)
        if proc.stdin is not None and self.stdin_view:
            os.set_blocking(proc.stdin.fileno(), False)
            selector.register(proc.stdin, selectors.EVENT_WRITE, "stdin")
        self.pidfd = _pidfd(proc.pid)
        if self.pidfd is not None:
            selector.register(self.pidfd, selectors.EVENT_READ, "exit")
        return selector

    def _loop(self, selector: selectors.BaseSelector, until: float | None) -> bool:
        """True once the child is done; False when ``until`` came first."""
        deadline = self.deadline
        while True:
            returncode = self.proc.poll()
            if returncode is not None and self.pidfd is not None:
                selector.unregister(self.pidfd)
                self._close_pidfd()
            if returncode is not None and not selector.get_map():
                return True
            now = time.monotonic()
            if self.reason is None and deadline is not None and now >= deadline:
                self._terminate(JobStatus.TIMED_OUT, now)
            if self.reason is None and now >= self.next_check:
                self.next_check = now + self.poll_interval
                if self.cancelled():
                    self._terminate(JobStatus.CANCELLED, now)
            if self.kill_at is not None and now >= self.kill_at:
                signal_group(self.proc.pid, signal.SIGKILL)
                self.kill_at = None
            if returncode is not None and self._leftovers_done(now):
                return True
            if until is not None and now >= until:
                return False
            wait = self.poll_interval
            if deadline is not None and self.reason is None:
                wait = min(wait, max(0.0, deadline - now))
            if until is not None:
                wait = min(wait, max(0.0, until - now))
            if selector.get_map():
                for key, _ in selector.select(wait):
                    self._pump(selector, key)
            else:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(wait)

    def _pump(self, selector: selectors.BaseSelector, key: selectors.SelectorKey) -> None:
        stream = key.data
        if stream == "stdin":
            self._feed(selector, key)
            return
        if stream == "exit":  # the child exited: the next poll() reaps it
            selector.unregister(key.fileobj)
            self._close_pidfd()
            return
        data = os.read(key.fd, CHUNK)
        if not data:
            selector.unregister(key.fileobj)
            return
        room = self.spec.max_output - self.kept[stream]
        if len(data) > room:
            self.truncated[stream] = True
            data = data[: max(0, room)]
        if data:
            self.kept[stream] += len(data)
            self.on_output(stream, data)

    def _feed(self, selector: selectors.BaseSelector, key: selectors.SelectorKey) -> None:
        try:
            written = os.write(key.fd, self.stdin_view[:CHUNK])
        except BlockingIOError:
            return
        except OSError as exc:  # the child closed its stdin: what it did not read is dropped
            if exc.errno not in (errno.EPIPE, errno.EBADF):
                raise
            written = len(self.stdin_view)
        self.stdin_view = self.stdin_view[written:]
        if not self.stdin_view:
            selector.unregister(key.fileobj)
            if self.proc.stdin is not None:  # EOF tells the child there is no more input
                self.proc.stdin.close()

    def _terminate(self, reason: JobStatus, now: float) -> None:
        """SIGTERM the group now; SIGKILL it after the grace period."""
        self.reason = reason
        signal_group(self.proc.pid, signal.SIGTERM)
        self.kill_at = now + self.spec.kill_grace

    def _leftovers_done(self, now: float) -> bool:
        """The main process is gone but something still holds its pipes.

        Give them ``LINGER`` seconds to finish writing, then SIGKILL the group; if a pipe
        is still open ``LINGER`` seconds after that (a grandchild escaped into a session of
        its own), stop reading it.
        """
        if self.exited_at is None:
            self.exited_at = now
        elif self.swept_at is None and now - self.exited_at >= LINGER:
            signal_group(self.proc.pid, signal.SIGKILL)
            self.swept_at = now
        elif self.swept_at is not None and now - self.swept_at >= LINGER:
            return True
        return False

    def _close_pidfd(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None

    def _finalise(self, selector: selectors.BaseSelector) -> None:
        """Whatever happened above, kill what is left and reap the child."""
        selector.close()
        self._close_pidfd()
        if self.proc.poll() is None:
            signal_group(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()

    def _outcome(self) -> Outcome:
        returncode = self.proc.returncode
        if self.reason is JobStatus.TIMED_OUT:
            error: str | None = f"timed out after {self.spec.timeout:g} s"
            status = JobStatus.TIMED_OUT
        elif self.reason is JobStatus.CANCELLED:
            error, status = "cancelled", JobStatus.CANCELLED
        elif returncode == 0:
            error, status = None, JobStatus.SUCCEEDED
        else:
            status = JobStatus.FAILED
            error = _describe_signal(-returncode) if returncode < 0 else None
        return Outcome(
            status,
            returncode=returncode,
            error=error,
            stdout_truncated=self.truncated["stdout"],
            stderr_truncated=self.truncated["stderr"],
        )


def _pidfd(pid: int) -> int | None:
    """A descriptor that becomes readable when ``pid`` exits, where the OS has them.

    Waiting on it in the selector wakes the loop the moment the child exits; without it a
    child that closed its pipes is polled with ``wait(timeout)``, which sleeps in steps of
    up to 50 ms and cost about 1 ms per short job.
    """
    open_pidfd = getattr(os, "pidfd_open", None)
    if open_pidfd is None:
        return None
    try:
        return int(open_pidfd(pid))
    except OSError:  # kernel older than 5.3, or seccomp said no
        return None


def _describe_signal(signum: int) -> str:
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    return f"killed by {name}"
