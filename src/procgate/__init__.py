"""procgate: turn command-line programs into a safe HTTP/JSON job API."""

from __future__ import annotations

from procgate.app import Gate
from procgate.commands import Command
from procgate.config import create_app
from procgate.errors import (
    ConfigError,
    Forbidden,
    InvalidRequest,
    JobNotFound,
    ProcgateError,
    RunnerBusy,
    RunnerClosed,
    UnknownCommand,
)
from procgate.jobs import Job, JobPage, JobStatus, Outcome, Spec
from procgate.runners import ProcessRunner, Runner, SyncRunner, ThreadRunner
from procgate.stores import JobStore, MemoryStore, SQLiteStore, open_store

__version__ = "0.1.0"

__all__ = [
    "Command",
    "ConfigError",
    "Forbidden",
    "Gate",
    "InvalidRequest",
    "Job",
    "JobNotFound",
    "JobPage",
    "JobStatus",
    "JobStore",
    "MemoryStore",
    "Outcome",
    "ProcessRunner",
    "ProcgateError",
    "Runner",
    "RunnerBusy",
    "RunnerClosed",
    "SQLiteStore",
    "Spec",
    "SyncRunner",
    "ThreadRunner",
    "UnknownCommand",
    "create_app",
    "open_store",
]
