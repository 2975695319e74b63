"""The jalki entry point of jalki-k8s: the ``k8s`` enricher and the ``jalki k8s`` command group.

The enricher (:class:`jalki_k8s.enricher.K8sEnricher`) is what the core's ``--enrich k8s`` runs; this
module registers it and the commands, and imports nothing heavy (lightkube) until one is used.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Annotated, Any

import typer

from jalki_core import hookimpl

if TYPE_CHECKING:
    from jalki_core.enrich import Enricher, EnricherOptions

app = typer.Typer(name="k8s", help="Kubernetes: print the DaemonSet manifests jalki deploys with.",
                  no_args_is_help=True)


@app.command("render")
def render_command(
    profile: Annotated[str, typer.Option(help="minimal (capabilities only), compat (adds SYS_ADMIN) or "
                                         "privileged.")] = "minimal",
    fmt: Annotated[str, typer.Option("--format", help="yaml (kubectl apply -f -) or json (a v1 List).")] = "yaml",
    owner_lookup: Annotated[bool, typer.Option(
        "--owner-lookup", help="Exact Deployment and CronJob names: grants get on apps/replicasets and "
        "batch/jobs and sets JALKI_K8S_OWNER_LOOKUP=1.")] = False,
) -> None:
    """Print the manifests of a profile (the same as deploy/kubernetes/rendered/PROFILE.yaml)."""
    from jalki_k8s.manifests import render

    typer.echo(render(profile, fmt, owner_lookup=owner_lookup), nl=False)


@hookimpl
def jalki_register_commands(cli: Any) -> None:
    """``jalki k8s ...``."""
    cli.add_typer(app, name="k8s")


def make_enricher(options: EnricherOptions) -> Enricher:
    """``--enrich k8s``: a :class:`~jalki_k8s.enricher.K8sEnricher` for this node."""
    from jalki_core.errors import UsageError
    from jalki_k8s.enricher import K8sEnricher
    from jalki_k8s.owners import OWNER_LOOKUP_ENV, owner_lookup_from_env

    try:
        owner_lookup = owner_lookup_from_env(os.environ.get(OWNER_LOOKUP_ENV))
    except ValueError as exc:
        raise UsageError(str(exc), hint=f"set {OWNER_LOOKUP_ENV}=1 to look owners up, or unset it") from None
    return K8sEnricher(node_name=options.node_name, owner_lookup=owner_lookup)


@hookimpl
def jalki_register_enrichers(registry: Any) -> None:
    """``--enrich k8s``."""
    registry.register("k8s", make_enricher, "pod, namespace, container and workload of each event's process "
                      "(Kubernetes API of this node)")
