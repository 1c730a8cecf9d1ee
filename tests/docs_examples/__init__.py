"""Every shell and Python example of README.md and docs/*.md runs, with the output it shows.

A fenced ``sh``, ``bash``, ``console`` or ``python`` block is either run here or marked
illustrative on the line above it (see docs/testing.md#procgates-own-suite)::

    <!-- example: illustrative, because it needs a Celery broker -->

- A block without a marker is run by the test that calls
  ``run_examples(pages, "page.md#anchor", ...)`` for its section (``"page.md"`` alone for
  the blocks above a page's first ``##``). ``test_convention.py`` reads those calls in
  every module of this package with ``ast`` and fails for a block no test runs, so a new
  example cannot slip in untested. The modules go by page: ``blocks.py`` finds the blocks,
  ``runner.py`` runs them, and ``test_<page>.py`` holds the tests of a page or group.
- ``<!-- example: run by test_name -->``: a test of this package runs the block itself, with
  setup the generic runner cannot give it (``example("page.md#anchor", n)`` gets its text).
- ``<!-- example: server config -->`` on a ``toml`` block: the page's shell examples run
  against ``procgate serve --config procgate.toml`` with that file; other pages use
  ``examples/procgate.toml``. ``toml`` blocks are otherwise not run: most are fragments of
  a file, and the whole files are loaded by the tests of their sections.
- ``run_examples(..., config=TEXT, env={...})``: for examples whose prose describes a
  config the page does not show in full (tokens, an argument policy), the test defines it,
  with a comment, and the variables the commands read (``$TOKEN``).

Shell blocks run in bash, one block per shell, in a directory of their page (a copy of
``examples/`` and the files the page's commands read). ``localhost:8000`` and
``127.0.0.1:8000`` are rewritten to the test server's address in the commands, and back in
their output. In a ``console`` block each ``$ `` line (with its continuation lines) is a
command and the lines up to the next ``$ `` its expected output; in an ``sh`` block a
comment directly under a command is that command's output (``# {"id": ...}``). Output is
compared line by line after normalising what differs between runs (job ids, times,
durations, upload directories, the dates of http.server's log); ``…`` or ``...`` matches any
text within a line, and a line holding only ``…`` or ``...`` any number of lines. A command
exits 0, unless the next command is ``echo $?``, which shows its status. ``procgate serve``,
``gunicorn`` and ``flask run`` commands start a server in the background, on a free port,
stopped when the block ends; one followed by ``echo $?`` is shown failing, and runs in the
foreground. ``pip install`` lines are not run (the suite's environment has the extras).
Python blocks run as a script in a fresh interpreter in their page's directory.
"""
