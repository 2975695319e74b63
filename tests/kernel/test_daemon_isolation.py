"""A probe whose decoder or derivation raises costs only that probe, and the daemon says so (issue 4, item 6).

A third-party plugin (installed the way pip would: a module and a dist-info with
a ``jalki`` entry point, found through ``PYTHONPATH``) registers
``faulty_connect``: jalki-tcp's connect probe with a decoder that raises on any
batch holding a connect to one port and a derivation that raises for another.
Deployed next to the real ``tcp_connect`` in a real daemon, its failures are
counted (``decode_error`` drops, ``derive_errors``), shown by ``status`` and
``health``, and change nothing for ``tcp_connect`` or for its own later events.
"""

from __future__ import annotations

import os
import random
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import running_daemon, wait_for
from netns_helpers import NetNs
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.kernel

FAULTY_MODULE = '''
from jalki_core import hookimpl
from jalki_tcp.probes import TcpConnectProbe

POISON_DECODE = {decode_port}
POISON_DERIVE = {derive_port}


def _ports(events):
    return {{(event.get("network_data") or {{}}).get("dst_port") for event in events}}


class FaultyConnectProbe(TcpConnectProbe):
    name = "faulty_connect"

    def decode(self, data, ctx):
        events = super().decode(data, ctx)
        if POISON_DECODE in _ports(events):
            raise ValueError("poisoned record")
        return events

    def derive(self, events, ctx):
        if POISON_DERIVE in _ports(events):
            raise RuntimeError("poisoned derivation")
        return super().derive(events, ctx)


@hookimpl
def jalki_register_probes(registry):
    registry.register(FaultyConnectProbe())
'''


def install_faulty_plugin(site: Path, decode_port: int, derive_port: int) -> dict[str, str]:
    """Install the plugin under ``site``; the environment that makes jalki find it."""
    site.mkdir()
    (site / "jalki_faulty.py").write_text(FAULTY_MODULE.format(decode_port=decode_port, derive_port=derive_port))
    info = site / "jalki_faulty-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: jalki-faulty\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[jalki]\nfaulty = jalki_faulty\n")
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}


def refused(netns: NetNs, port: int, count: int) -> list[int]:
    """``count`` refused connects to 127.0.0.1:port in ``netns``; their source ports."""
    report = netns.traffic("connect", "--port", str(port), "--count", str(count), "--timeout", "2")
    assert [r["error"] for r in report["results"]] == ["ECONNREFUSED"] * count
    return [r["sport"] for r in report["results"]]


def sports(events: list[dict[str, Any]], port: int) -> list[int]:
    return [e["network_data"]["src_port"] for e in events
            if e["type"] == "kernel.tcp.connect" and e["network_data"]["dst_port"] == port]


def test_a_raising_decoder_or_derivation_costs_only_its_probe(netns: NetNs, tmp_path: Path) -> None:
    decode_port, derive_port, healthy_port = random.sample(range(20000, 30000), 3)
    env = install_faulty_plugin(tmp_path / "site", decode_port, derive_port)
    with running_daemon(tmp_path, env=env, metrics=True) as daemon, daemon.client() as client:
        for probe in ("tcp_connect", "faulty_connect"):
            client.deploy(probe)

        poisoned = refused(netns, decode_port, 3)
        wait_for(lambda: sports(client.events(probe="tcp_connect", limit=10_000), decode_port) == poisoned,
                 what="tcp_connect to see every poisoned connect")
        faulty = wait_for(lambda: (p := client.status()["probes"]["faulty_connect"])["drops"]["decode_error"] >= 3
                          and p, what="the decoder failures to be counted")
        assert sports(client.events(probe="faulty_connect", limit=10_000), decode_port) == []
        assert faulty["attach"] is not None  # still attached and draining

        derived = refused(netns, derive_port, 2)
        wait_for(lambda: client.status()["probes"]["faulty_connect"]["derive_errors"] >= 1,
                 what="the derivation failure to be counted")
        # a failed derivation costs the derived events only: the batch's own events are delivered
        wait_for(lambda: sports(client.events(probe="faulty_connect", limit=10_000), derive_port) == derived,
                 what="faulty_connect's own events despite its derivation failing")

        healthy = refused(netns, healthy_port, 4)
        for probe in ("tcp_connect", "faulty_connect"):
            wait_for(lambda probe=probe: sports(client.events(probe=probe, limit=10_000), healthy_port) == healthy,
                     what=f"{probe} to see the healthy connects")
        status = client.status()["probes"]
        assert status["tcp_connect"]["drops"]["decode_error"] == 0 and status["tcp_connect"]["derive_errors"] == 0
        assert status["faulty_connect"]["drops"]["decode_error"] == faulty["drops"]["decode_error"]

        assert daemon.metrics_url is not None
        with urllib.request.urlopen(f"{daemon.metrics_url}/metrics", timeout=30) as response:
            drops = {tuple(sorted(sample.labels.items())): sample.value
                     for family in text_string_to_metric_families(response.read().decode())
                     for sample in family.samples if sample.name == "jalki_drops_total"}
        assert drops[(("cause", "decode_error"), ("probe", "faulty_connect"))] == faulty["drops"]["decode_error"]
        assert drops[(("cause", "decode_error"), ("probe", "tcp_connect"))] == 0

        health = daemon.cli("health")
        assert health.returncode == 1, health.stdout
        lines = health.stdout.splitlines()
        assert "probe tcp_connect: ok" in lines
        [faulty_line] = [line for line in lines if line.startswith("probe faulty_connect:")]
        assert "lost records (decode_error" in faulty_line and "derive errors" in faulty_line, faulty_line
