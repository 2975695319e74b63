"""The ``jalki`` command line (typer + rich), one module per stage.

``app`` (the typer app, :func:`main`, errors to exit codes), ``run``, ``serve``,
``ask``, ``kb`` (find, list, explain), ``daemon`` (the daemon's clients:
status, deploy, undeploy, watch, stream, recent, health), ``doctor``,
``newprobe`` (``jalki new-probe``); ``options`` (option types and checks),
``tables`` (tables that read at 80 columns), ``common``, ``exit_codes``.
"""

from __future__ import annotations

from jalki_core.cli.app import app, main

__all__ = ["app", "main"]
