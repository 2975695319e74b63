"""What a map, program, link or ring-buffer reader needs of the object that owns it.

:class:`~jalki_core._libbpf.objects.BpfObject` is the one implementation; the
handles name this protocol instead of the class so that ``objects`` (which
creates them) is imported by none of them.
"""

from __future__ import annotations

from typing import Any, Protocol


class ObjectOwner(Protocol):
    """The owning BPF object, as its maps, programs, links and readers see it."""

    @property
    def name(self) -> str:
        """The object's name (in error messages)."""

    @property
    def load_attempted(self) -> bool:
        """Whether the object was handed to the kernel (settings made before load are refused after it)."""

    def _remember_link(self, link: Any) -> None:
        """A link of one of its programs was made (destroyed with the object)."""

    def _forget_link(self, link: Any) -> None:
        """A link of one of its programs was destroyed."""

    def _remember_reader(self, reader: Any) -> None:
        """A ring-buffer reader of one of its maps was created (closed with the object)."""

    def _forget_reader(self, reader: Any) -> None:
        """A ring-buffer reader of one of its maps was closed."""
