"""The shared lifetime behaviour of every handle class: context manager and safe finaliser."""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType
from typing import Self


class Closeable(ABC):
    """A handle released by :meth:`close` (idempotent), usable in ``with``, closed when collected."""

    @abstractmethod
    def close(self) -> None:
        """Release the handle; calling it again does nothing."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except BaseException:  # never raise from a finalizer
            pass
