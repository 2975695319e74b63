"""The jalki entry point of jalki-k8s: the ``jalki k8s`` command group (``jalki k8s render``).

The enricher (:class:`jalki_k8s.enricher.K8sEnricher`) is used by the core's ``--enrich k8s``; this module
only registers commands, and imports nothing heavy until one runs.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from jalki_core import hookimpl

app = typer.Typer(name="k8s", help="Kubernetes: print the DaemonSet manifests jalki deploys with.",
                  no_args_is_help=True)


@app.command("render")
def render_command(
    profile: Annotated[str, typer.Option(help="minimal (capabilities only), compat (adds SYS_ADMIN) or "
                                         "privileged.")] = "minimal",
    fmt: Annotated[str, typer.Option("--format", help="yaml (kubectl apply -f -) or json (a v1 List).")] = "yaml",
) -> None:
    """Print the manifests of a profile (the same as deploy/kubernetes/rendered/PROFILE.yaml)."""
    from jalki_k8s.manifests import render

    typer.echo(render(profile, fmt), nl=False)


@hookimpl
def jalki_register_commands(cli: Any) -> None:
    """``jalki k8s ...``."""
    cli.add_typer(app, name="k8s")
