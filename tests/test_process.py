"""process.execute: spawning, draining, capping, timeouts, cancels, group kills, reaping."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import fields
from pathlib import Path

import pytest

from procgate import process
from procgate.commands import child_env
from procgate.jobs import JobStatus, Outcome, Spec
from tests.conftest import live_pids_in_group, wait_for, zombie_children


class Capture:
    """Collects what execute reports, and can be told to cancel."""

    def __init__(self) -> None:
        self.out: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        self.cancel = threading.Event()

    def on_output(self, stream: str, data: bytes) -> None:
        self.out[stream].extend(data)

    def run(self, argv: list[str], **spec: object) -> Outcome:
        return process.execute(
            Spec(argv=tuple(argv), env=child_env(), **spec),  # type: ignore[arg-type]
            on_output=self.on_output,
            cancelled=self.cancel.is_set,
        )

    @property
    def stdout(self) -> bytes:
        return bytes(self.out["stdout"])

    @property
    def stderr(self) -> bytes:
        return bytes(self.out["stderr"])


def test_success_captures_both_streams() -> None:
    """Exit 0 is succeeded, with stdout and stderr captured separately."""
    cap = Capture()
    outcome = cap.run(["/bin/sh", "-c", "echo out; echo err >&2"])
    assert outcome == Outcome(JobStatus.SUCCEEDED, returncode=0)
    assert (cap.stdout, cap.stderr) == (b"out\n", b"err\n")


def test_nonzero_exit_is_failed() -> None:
    """A non-zero exit code is failed, with the code kept."""
    outcome = Capture().run(["/bin/sh", "-c", "exit 3"])
    assert (outcome.status, outcome.returncode, outcome.error) == (JobStatus.FAILED, 3, None)


def test_death_by_signal_is_failed_and_named() -> None:
    """A child killed by a signal is failed, with a negative code and the signal named."""
    outcome = Capture().run(["/bin/sh", "-c", "kill -SEGV $$"])
    assert outcome.status is JobStatus.FAILED
    assert outcome.returncode == -11
    assert outcome.error == "killed by SIGSEGV"


@pytest.mark.docs("http-api.md#statuses")
def test_missing_program_is_error() -> None:
    """A program that cannot be started is an error outcome, not an exception."""
    outcome = Capture().run(["/nonexistent/program"])
    assert outcome.status is JobStatus.ERROR
    assert outcome.error is not None
    assert "/nonexistent/program" in outcome.error


def test_bad_cwd_is_error() -> None:
    """A working directory that does not exist is an error outcome."""
    outcome = Capture().run(["/bin/pwd"], cwd="/nonexistent-dir")
    assert outcome.status is JobStatus.ERROR


@pytest.mark.docs("python-api.md#how-a-jobs-process-is-run")
def test_cwd_and_minimal_env(tmp_path: Path) -> None:
    """The child runs in the given cwd with exactly the environment it was given."""
    cap = Capture()
    outcome = process.execute(
        Spec(argv=("/usr/bin/env",), env={"PATH": "/usr/bin:/bin", "ONLY": "this"}, cwd="/"),
        on_output=cap.on_output,
        cancelled=cap.cancel.is_set,
    )
    assert outcome.status is JobStatus.SUCCEEDED
    assert sorted(cap.stdout.decode().splitlines()) == ["ONLY=this", "PATH=/usr/bin:/bin"]
    cap2 = Capture()
    cap2.run(["/bin/pwd"], cwd=str(tmp_path))
    assert cap2.stdout == f"{tmp_path}\n".encode()


def test_stdin_large_is_fed_without_deadlock() -> None:
    """Stdin larger than a pipe buffer is fed while output is drained."""
    data = os.urandom(3 << 20)
    cap = Capture()
    outcome = cap.run(["/bin/cat"], stdin=data)
    assert outcome.status is JobStatus.SUCCEEDED
    assert cap.stdout == data


@pytest.mark.docs("python-api.md#how-a-jobs-process-is-run")
def test_stdin_is_devnull_by_default() -> None:
    """Without stdin the child reads end-of-file at once instead of hanging."""
    cap = Capture()
    outcome = cap.run(["/bin/cat"], timeout=5)
    assert outcome.status is JobStatus.SUCCEEDED
    assert cap.stdout == b""


def test_child_closing_stdin_early_is_fine() -> None:
    """A child that ignores its stdin does not break or block the job."""
    cap = Capture()
    outcome = cap.run(["/bin/true"], stdin=b"x" * (1 << 20))
    assert outcome.status is JobStatus.SUCCEEDED


def test_binary_output_is_kept_as_bytes() -> None:
    """Output is bytes, untouched, even when it is not UTF-8."""
    cap = Capture()
    cap.run([sys.executable, "-c", "import sys; sys.stdout.buffer.write(bytes(range(256)))"])
    assert cap.stdout == bytes(range(256))


@pytest.mark.docs("live-output.md#truncation")
def test_output_cap_truncates_without_blocking_the_child() -> None:
    """Past max_output the rest is drained and dropped; the child still runs to the end."""
    cap = Capture()
    script = "head -c 20000000 /dev/zero; echo done >&2"
    outcome = cap.run(["/bin/sh", "-c", script], max_output=1000, timeout=30)
    assert outcome.status is JobStatus.SUCCEEDED
    assert outcome.stdout_truncated
    assert not outcome.stderr_truncated
    assert cap.stdout == b"\0" * 1000
    assert cap.stderr == b"done\n"


@pytest.mark.docs("python-api.md#how-a-jobs-process-is-run")
def test_both_streams_large_do_not_deadlock() -> None:
    """Both pipes are drained concurrently, so a child filling both never blocks."""
    code = (
        "import sys\n"
        "for _ in range(200):\n"
        "    sys.stdout.write('o' * 10000); sys.stderr.write('e' * 10000)\n"
    )
    cap = Capture()
    outcome = cap.run([sys.executable, "-c", code], timeout=30)
    assert outcome.status is JobStatus.SUCCEEDED
    assert cap.stdout == b"o" * 2_000_000
    assert cap.stderr == b"e" * 2_000_000


@pytest.mark.docs("python-api.md#how-a-jobs-process-is-run")
def test_timeout_kills_the_whole_tree() -> None:
    """A timeout SIGTERMs the process group: background children die too."""
    cap = Capture()
    started = time.monotonic()
    outcome = cap.run(
        ["/bin/sh", "-c", "echo $$; sleep 100 & sleep 100"], timeout=0.5, kill_grace=2
    )
    assert time.monotonic() - started < 5
    assert outcome.status is JobStatus.TIMED_OUT
    assert outcome.error == "timed out after 0.5 s"
    pgid = int(cap.stdout.split()[0])
    wait_for(lambda: not live_pids_in_group(pgid), timeout=2)


@pytest.mark.docs("http-api.md#statuses")
@pytest.mark.docs("python-api.md#how-a-jobs-process-is-run")
def test_sigterm_ignored_escalates_to_sigkill() -> None:
    """A child that ignores SIGTERM is SIGKILLed after the grace period."""
    cap = Capture()
    script = "trap '' TERM; echo $$; sleep 100 & while :; do sleep 0.1; done"
    started = time.monotonic()
    outcome = cap.run(["/bin/sh", "-c", script], timeout=0.3, kill_grace=0.5)
    elapsed = time.monotonic() - started
    assert outcome.status is JobStatus.TIMED_OUT
    assert outcome.returncode == -9
    assert 0.7 < elapsed < 5
    wait_for(lambda: not live_pids_in_group(int(cap.stdout.split()[0])), timeout=2)


def test_cancel_kills_the_whole_tree() -> None:
    """A cancel request is noticed within a poll interval and kills the group."""
    cap = Capture()
    result: list[Outcome] = []
    thread = threading.Thread(
        target=lambda: result.append(cap.run(["/bin/sh", "-c", "echo $$; sleep 100 & sleep 100"]))
    )
    thread.start()
    wait_for(lambda: cap.stdout)
    pgid = int(cap.stdout.split()[0])
    asked = time.monotonic()
    cap.cancel.set()
    thread.join(10)
    assert time.monotonic() - asked < 1
    assert result[0].status is JobStatus.CANCELLED
    wait_for(lambda: not live_pids_in_group(pgid), timeout=1)


def test_leftovers_are_killed_after_main_process_exits() -> None:
    """A background child holding the pipes does not keep the job alive for long."""
    cap = Capture()
    started = time.monotonic()
    outcome = cap.run(["/bin/sh", "-c", "echo $$; sleep 100 & echo main done"])
    assert time.monotonic() - started < 4
    assert outcome.status is JobStatus.SUCCEEDED
    assert cap.stdout.endswith(b"main done\n")
    wait_for(lambda: not live_pids_in_group(int(cap.stdout.split()[0])), timeout=2)


def test_output_after_main_exit_is_still_collected() -> None:
    """Whatever a finished child's pipes still hold is read before the job ends."""
    cap = Capture()
    cap.run(["/bin/sh", "-c", "(sleep 0.2; echo late) & echo early"])
    assert cap.stdout == b"early\nlate\n"


def test_child_closing_its_pipes_is_still_timed_out() -> None:
    """A child that closes stdout and stderr is still watched until it exits."""
    cap = Capture()
    outcome = cap.run(["/bin/sh", "-c", "exec >&- 2>&-; sleep 100"], timeout=0.3)
    assert outcome.status is JobStatus.TIMED_OUT


@pytest.mark.docs("python-api.md#how-a-jobs-process-is-run")
def test_children_are_always_reaped() -> None:
    """Hundreds of jobs leave no zombie children behind."""
    for _ in range(300):
        Capture().run(["/bin/true"])
    assert zombie_children() == []


def test_output_callback_failure_still_reaps() -> None:
    """If recording output fails, the child is killed and reaped, and the error surfaces."""

    def broken(stream: str, data: bytes) -> None:
        raise RuntimeError("store is down")

    spec = Spec(argv=("/bin/sh", "-c", "echo $$; sleep 100"), env=child_env())
    with pytest.raises(RuntimeError, match="store is down"):
        process.execute(spec, on_output=broken, cancelled=lambda: False)
    assert zombie_children() == []


def test_signal_group_reports_a_missing_group() -> None:
    """Signalling a group that no longer exists is not an error."""
    assert process.signal_group(2**22 + 12345, 0) is False


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
@pytest.mark.docs("live-output.md#truncation")
def test_max_output_is_exact_on_each_stream(stream: str) -> None:
    """A stream of exactly max_output bytes is whole and not truncated; one byte more is
    truncated to max_output. Each stream counts on its own."""
    fd = 1 if stream == "stdout" else 2
    for size, truncated in ((10, False), (11, True)):
        cap = Capture()
        code = f"import os; os.write({fd}, b'x' * {size})"
        outcome = cap.run([sys.executable, "-c", code], max_output=10, timeout=30)
        assert outcome.status is JobStatus.SUCCEEDED
        assert cap.out[stream] == b"x" * 10
        assert getattr(outcome, f"{stream}_truncated") is truncated
        other = "stderr" if stream == "stdout" else "stdout"
        assert getattr(outcome, f"{other}_truncated") is False


@pytest.mark.docs("python-api.md#how-a-jobs-process-is-run")
def test_a_child_that_never_reads_its_stdin_still_times_out() -> None:
    """Stdin far larger than a pipe buffer, to a child that never reads it: writing it
    never blocks the supervisor, so the timeout still ends the job on time (0.5 s here;
    about 0.6 s measured, 5 s allows a loaded machine)."""
    cap = Capture()
    started = time.monotonic()
    # It reads a little first, so the pipe has room for part of the next write, not all.
    script = "head -c 5000 >/dev/null; sleep 30"
    outcome = cap.run(["/bin/sh", "-c", script], stdin=b"x" * (4 << 20), timeout=0.5, kill_grace=1)
    assert outcome.status is JobStatus.TIMED_OUT
    assert time.monotonic() - started < 5


def _stat_start(pid: int) -> int:
    """Field 22 of /proc/PID/stat, read the careful way (after the last ")")."""
    return int(Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[19])


def test_a_process_tag_names_the_boot_the_pid_and_its_start() -> None:
    """``boot-id:pid:start`` with the start read from /proc by default (here of pid 1,
    which started long before this test), also for a program whose name holds ")" and
    spaces; the boot id is the kernel's."""
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert process._read_boot_id() == boot
    assert process.process_tag(1) == f"{boot}:1:{_stat_start(1)}"


def test_a_process_tag_survives_a_name_that_mimics_stat(tmp_path: Path) -> None:
    """A program named like the middle of a stat line ("a) R 1 2 3 4 5") gets the same
    start whether read from /proc or taken from the clock as it starts."""
    program = tmp_path / "a) R 1 2 3 4 5"
    program.write_bytes(Path("/bin/sleep").read_bytes())
    program.chmod(0o755)
    proc = subprocess.Popen([str(program), "30"])
    try:
        cheap = process.process_tag(proc.pid, just_started=True)
        wait_for(lambda: b"a) R 1 2" in Path(f"/proc/{proc.pid}/stat").read_bytes())
        exact = process.process_tag(proc.pid)
        assert cheap is not None
        assert exact is not None
        assert exact.endswith(f":{_stat_start(proc.pid)}")
        ticks = os.sysconf("SC_CLK_TCK")
        assert abs(int(cheap.rsplit(":", 1)[1]) - int(exact.rsplit(":", 1)[1])) <= ticks
    finally:
        proc.kill()
        proc.wait()


def test_kill_tagged_takes_a_start_within_one_second() -> None:
    """A tag whose start is exactly START_TOLERANCE (1 s) off still names the process and
    kills its group; a tag with a start that is not a number names nothing."""
    ticks = os.sysconf("SC_CLK_TCK")
    boot = process._read_boot_id()
    for offset in (ticks, -ticks):
        proc = subprocess.Popen(["/bin/sleep", "30"], start_new_session=True)
        try:
            start = _stat_start(proc.pid)
            assert process.kill_tagged(f"{boot}:{proc.pid}:x") is False
            assert process.kill_tagged(f"{boot}:{proc.pid}:{start + offset}") is True
            assert proc.wait(30) == -9
        finally:
            proc.kill()
            proc.wait()


@pytest.mark.docs("python-api.md#how-a-jobs-process-is-run")
def test_a_grandchild_in_a_session_of_its_own_does_not_hold_the_job() -> None:
    """A grandchild that left the process group (setsid) keeps the pipes open and cannot
    be killed with the group: the job still ends, LINGER after the group's SIGKILL
    (2 s after the main process, 2.2 s measured; 8 s allows a loaded machine)."""
    cap = Capture()
    script = "setsid sh -c 'echo $$; exec sleep 30' & sleep 0.2; echo main done"
    started = time.monotonic()
    outcome = cap.run(["/bin/sh", "-c", script], timeout=60)
    took = time.monotonic() - started
    escaped = int(cap.stdout.split()[0])
    try:
        assert outcome.status is JobStatus.SUCCEEDED
        assert cap.stdout.endswith(b"main done\n")
        # Read for LINGER after the exit, then LINGER after the SIGKILL: never less.
        assert 2 * process.LINGER + 0.2 <= took < 8
    finally:
        os.kill(escaped, 9)


@pytest.mark.docs("http-api.md#statuses")
def test_a_cancel_during_the_grace_period_keeps_timed_out() -> None:
    """A job that timed out and is cancelled while its SIGTERM grace runs stays
    timed_out (killed after the grace), not cancelled; a cancel alone says "cancelled"."""
    cap = Capture()
    script = "trap 'echo term' TERM; while :; do sleep 0.05; done"
    outcome = process.execute(
        Spec(argv=("/bin/sh", "-c", script), env=child_env(), timeout=0.3, kill_grace=1),
        on_output=cap.on_output,
        cancelled=lambda: b"term" in cap.stdout,  # asked once the SIGTERM has come
    )
    assert (outcome.status, outcome.returncode) == (JobStatus.TIMED_OUT, -9)
    assert outcome.error == "timed out after 0.3 s"
    cap = Capture()
    cap.cancel.set()
    cancelled = cap.run(["/bin/sleep", "30"], kill_grace=1)
    assert (cancelled.status, cancelled.error) == (JobStatus.CANCELLED, "cancelled")


def test_a_signal_without_a_name_is_given_by_number() -> None:
    """A child killed by a real-time signal, which has no name, is "killed by signal N"."""
    outcome = Capture().run(["/bin/sh", "-c", "kill -40 $$"])
    assert (outcome.status, outcome.returncode) == (JobStatus.FAILED, -40)
    assert outcome.error == "killed by signal 40"


def test_stdin_from_a_file_is_read_and_the_file_closed(tmp_path: Path) -> None:
    """With ``stdin_path`` the child reads that file as its stdin; the parent keeps no
    descriptor of it afterwards."""
    source = tmp_path / "input"
    source.write_bytes(b"from a file\n" * 1000)
    before = len(os.listdir("/proc/self/fd"))
    cap = Capture()
    outcome = cap.run(["/bin/cat"], stdin_path=str(source), timeout=30)
    assert outcome.status is JobStatus.SUCCEEDED
    assert cap.stdout == source.read_bytes()
    assert len(os.listdir("/proc/self/fd")) == before


def test_user_and_group_drop_roots_groups() -> None:
    """``user`` and ``group`` (the server runs as root here): the child has that uid and
    gid and no supplementary group of root's."""
    import grp
    import pwd

    nobody = pwd.getpwnam("nobody")
    group = grp.getgrnam("nogroup")
    cap = Capture()
    saved = os.getgroups()
    os.setgroups([0, 4])  # supplementary groups for the child not to inherit
    try:
        outcome = cap.run(["/bin/sh", "-c", "id -u; id -g; id -G"], user="nobody", group="nogroup")
    finally:
        os.setgroups(saved)
    assert outcome.status is JobStatus.SUCCEEDED
    gid = group.gr_gid
    assert cap.stdout == f"{nobody.pw_uid}\n{gid}\n{gid}\n".encode()


def test_the_output_cap_counts_every_piece() -> None:
    """Output arriving in several pieces is counted as a whole against max_output."""
    cap = Capture()
    script = "for i in 1 2 3; do head -c 600 /dev/zero; sleep 0.05; done"
    outcome = cap.run(["/bin/sh", "-c", script], max_output=1000, timeout=30)
    assert outcome.stdout_truncated is True
    assert cap.stdout == b"\0" * 1000


def test_longest_is_the_timeout_grace_two_lingers_and_a_second() -> None:
    """How long ``execute`` can take at most: None without a timeout."""
    assert process.longest(Spec(argv=("x",), timeout=10, kill_grace=2)) == (
        10 + 2 + 2 * process.LINGER + 1
    )
    assert process.longest(Spec(argv=("x",))) is None


def test_a_child_that_closes_its_stdin_costs_no_cpu_while_it_runs() -> None:
    """Input the child will never read is dropped once, not retried in a busy loop."""
    cap = Capture()
    before = time.process_time()
    outcome = cap.run(
        ["/bin/sh", "-c", "exec 0<&-; sleep 1; echo done"], stdin=b"x" * (1 << 20), timeout=30
    )
    spent = time.process_time() - before
    assert (outcome.status, cap.stdout) == (JobStatus.SUCCEEDED, b"done\n")
    assert spent < 0.5, f"the supervisor spent {spent:.2f} s of CPU on a 1 s child"


def test_a_failing_on_start_kills_and_reaps_the_child() -> None:
    """When the start cannot be recorded, the child is not left running unsupervised."""
    pids: list[int] = []

    def on_start(tag: str) -> None:
        pids.append(int(tag.split(":")[1]))
        raise RuntimeError("store gone")

    started = time.monotonic()
    with pytest.raises(RuntimeError, match="store gone"):
        process.execute(
            Spec(argv=("/bin/sleep", "100"), env=child_env(), timeout=200),
            on_output=lambda stream, data: None,
            cancelled=lambda: False,
            on_start=on_start,
        )
    assert time.monotonic() - started < 10
    (pid,) = pids
    with pytest.raises(ProcessLookupError):  # killed and reaped, not a zombie
        os.kill(pid, 0)


def test_start_python_runs_a_module_on_a_socket_in_our_group() -> None:
    """The helper speaks over the socket, reads nothing from stdin, dies with the server."""
    from multiprocessing.connection import Connection

    saved, (read_end, write_end) = os.dup(0), os.pipe()
    os.dup2(read_end, 0)  # a terminal or a pipe on our stdin must not reach the helper
    try:
        helper, sock = process.start_python("procgate.runners._worker")
    finally:
        os.dup2(saved, 0)
        for descriptor in (saved, read_end, write_end):
            os.close(descriptor)
    conn = Connection(sock.detach())
    try:
        assert os.getpgid(helper.pid) == os.getpgid(0)
        assert os.readlink(f"/proc/{helper.pid}/fd/0") == "/dev/null"
        spec = Spec(argv=("/bin/echo", "hi"), env=child_env(), timeout=30)
        conn.send(("run", "job", tuple(getattr(spec, f.name) for f in fields(Spec))))
        replies = []
        while not replies or replies[-1][0] != "done":
            assert conn.poll(30), f"no reply from the helper after {replies}"
            replies.append(conn.recv())
        assert ("out", "stdout", b"hi\n") in replies
        assert replies[-1][1:3] == ("succeeded", 0)
        conn.send(("stop",))
        process.reap(helper, 30)
        assert helper.returncode == 0
    finally:
        conn.close()
        process.reap(helper, 5)


def test_reap_kills_a_helper_that_does_not_exit_in_time() -> None:
    """reap waits its timeout, then SIGKILLs; an exited helper keeps its own code."""
    stuck = subprocess.Popen(["/bin/sleep", "100"])
    started = time.monotonic()
    process.reap(stuck, 0.2)
    assert stuck.returncode == -9
    assert 0.2 <= time.monotonic() - started < 10
    done = subprocess.Popen(["/bin/sh", "-c", "exit 3"])
    process.reap(done, 30)
    assert done.returncode == 3
