"""Turning a store backend's faults into the one exception the Gate renders as 503.

A store that cannot be reached or written (Redis down or timing out, a SQLite file that
is read-only, gone, or on a full disk) raises ``StoreUnavailable`` from every public
method: the Gate answers 503 with ``Retry-After``, and runners retry with backoff. Bugs
(a constraint violated, an API misused) are not faults and pass through unchanged.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from procgate.errors import StoreUnavailable

logger = logging.getLogger("procgate")

_T = TypeVar("_T")

#: ``classify(exc)``: why the store is unavailable (a short text), or None if ``exc`` is
#: not a fault of the store's backend.
Classify = Callable[[BaseException], "str | None"]


def translate_faults(name: str, classify: Classify) -> Callable[[type[_T]], type[_T]]:
    """A class decorator: every public method re-raises backend faults as
    ``StoreUnavailable("<name> store unavailable: <why>")``.

    One decorator rather than a ``try`` in each method, so a method added later is covered
    too. The original exception stays chained, for the log.
    """

    def decorate(cls: type[_T]) -> type[_T]:
        for attr, value in list(vars(cls).items()):
            if attr.startswith("_") or not callable(value) or isinstance(value, staticmethod):
                continue
            if "__mutmut_" in attr:  # mutmut's copy of a method, private ones too: not API
                continue
            setattr(cls, attr, _guarded(value, name, classify))
        return cls

    return decorate


def _guarded(method: Callable[..., Any], name: str, classify: Classify) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except StoreUnavailable:
            raise
        except Exception as exc:
            why = classify(exc)
            if why is None:
                raise
            raise StoreUnavailable(f"the {name} store is unavailable: {why}") from exc

    return call
