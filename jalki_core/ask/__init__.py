"""``ask``: from a question to ranked findings with evidence.

``engine`` finds the knowledge-base entries, attaches what is installed,
collects events and evaluates the rules; ``result`` is the answer's shape
(``specs/ask.schema.json``). The public entry points are
:func:`jalki_core.ask` / :func:`jalki_core.ask_async`.

Importing this package (``jalki_core.ask.engine`` …) makes Python set the
attribute ``jalki_core.ask`` to the package, where the public function of the
same name was: so the package is callable, and ``jalki_core.ask(question)``
answers the question whichever of the two the name holds.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jalki_core.ask.result import AskResult


class _CallablePackage(types.ModuleType):
    """This package, callable as :func:`jalki_core.ask`."""

    def __call__(self, question: str, **options: Any) -> AskResult:
        from jalki_core.ask.engine import ask

        return ask(question, **options)


sys.modules[__name__].__class__ = _CallablePackage
