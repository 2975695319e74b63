"""The compiled cffi module; nothing outside ``jalki_core._libbpf`` imports it."""

from __future__ import annotations

from typing import Any

from jalki_core._libbpf._bindings import ffi as _ffi
from jalki_core._libbpf._bindings import lib as _lib

ffi: Any = _ffi
lib: Any = _lib

__all__ = ["ffi", "lib"]
