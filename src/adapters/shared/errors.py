"""The shape of every technology's error mapping: a context manager around that technology's ``translate``."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType

from stateport.domain.errors import StateportError, Unavailable
from stateport.domain.ports.observer import observer


class TranslatedErrors:
    """``with TranslatedErrors(translate): ...`` re-raises an exception as the domain error ``translate``
    gives for it, ``from`` the original; an exception it gives None for (a domain error, anything not the
    driver's) passes unchanged.

    A plain class rather than ``contextlib.contextmanager``: it wraps every SQL statement on the hot path.
    """

    __slots__ = ("_backend", "_translate")

    def __init__(self, translate: Callable[[Exception], StateportError | None], backend: str) -> None:
        self._translate = translate
        self._backend = backend  # the ``store_error`` label of what it maps to Unavailable

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if isinstance(exc, Exception):
            error = self._translate(exc)
            if error is not None:
                if isinstance(error, Unavailable):
                    observer().store_error(self._backend, error.detail)
                raise error from exc
