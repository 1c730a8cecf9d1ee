"""Run the whole test suite several times in a row while bench/peers.py loads the CPU.

``python3 bench/loaded_suite.py --runs 10``: a check that the suite has no timing races
on a busy 2-core machine. ``bench/peers.py`` (without Flask-Shell2HTTP, which needs a
venv of its own) runs over and over in the background: its servers, wrk and children
take both cores; each suite run's result and wall time is
printed, and the script exits non-zero if any run failed. The load stops with the
script. Everything stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: One short round of peers.py, without Flask-Shell2HTTP (it needs a venv of its own).
PEERS_ARGS = ("--rounds", "1", "--duration", "2", "--no-fs2h")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="suite runs in a row")
    parser.add_argument(
        "--pytest-args", default="-q -p no:cacheprovider", help="arguments for pytest"
    )
    parser.add_argument(
        "--logs", type=Path, help="write each failed run's whole pytest output to DIR/run-N.log"
    )
    args = parser.parse_args()
    # SIGTERM (kill, a CI timeout) cleans up as Ctrl-C does: the servers are stopped.
    signal.signal(signal.SIGTERM, _terminated)
    stop = threading.Event()
    current: list[subprocess.Popen[bytes]] = []

    def keep_loading() -> None:
        while not stop.is_set():
            proc = subprocess.Popen(
                [sys.executable, "bench/peers.py", *PEERS_ARGS],
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            current[:] = [proc]
            proc.wait()

    loader = threading.Thread(target=keep_loading, daemon=True)
    loader.start()
    failed = 0
    try:
        time.sleep(10)  # let the load start
        for run in range(1, args.runs + 1):
            started = time.monotonic()
            result = subprocess.run(
                [sys.executable, "-m", "pytest", *args.pytest_args.split()],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=False,
            )
            took = time.monotonic() - started
            summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
            print(f"run {run}: exit {result.returncode}, {took:.0f} s: {summary}", flush=True)
            if result.returncode != 0:
                failed += 1
                failures = [line for line in result.stdout.splitlines() if "FAILED" in line]
                print("\n".join(failures[:20]), flush=True)
                if args.logs is not None:
                    args.logs.mkdir(parents=True, exist_ok=True)
                    log = args.logs / f"run-{run}.log"
                    log.write_text(result.stdout + result.stderr)
                    print(f"whole output: {log}", flush=True)
        load_avg = os.getloadavg()[0]
        print(f"{args.runs - failed} of {args.runs} runs passed; load average {load_avg:.1f}")
    finally:
        stop.set()
        for proc in current:
            _stop_tree(proc.pid)
        loader.join(60)
    return 1 if failed else 0


def _stop_tree(root: int) -> None:
    """SIGKILL ``root`` and every process under it, in whatever session each one is (the
    servers peers.py starts have sessions of their own)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_bytes()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(b")", 1)[1].split()[1])
    tree, grew = {root}, True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= more
        grew = bool(more)
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)



def _terminated(signum: int, frame: object) -> None:
    """Turn SIGTERM into SystemExit, so that the cleanup in ``finally`` runs."""
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    raise SystemExit(main())
