"""``python -m procgate``: the same as the ``procgate`` command."""

from __future__ import annotations

import sys

from procgate.cli import main

sys.exit(main())
