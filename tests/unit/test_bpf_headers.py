"""Headers by concern: only objects of socket probes declare the socket-owner map.

``jalki/common.bpf.h`` holds what every probe needs; the socket-owner map and
the socket readers live in ``jalki/sock.bpf.h``, which only jalki_tcp's
objects include. Checked on the built objects of every installed probe, by
libbpf's own map listing (opening an object needs no privileges).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from jalki_core.bpf_build import include_dirs
from jalki_core.plugins import JalkiPlugins
from jalki_core.probe import ProbeResource

SOCKET_MAP = "jalki_sock_owner"
SHARED_MAPS = {"jalki_config", "jalki_drops"}


def installed_probes() -> list[tuple[str, str, set[str]]]:
    """(plugin, probe, map names of its object) for every installed probe."""
    from jalki_core._libbpf import BpfObject

    plugins = JalkiPlugins()
    found = []
    for plugin in sorted(plugins.describe(), key=lambda row: row["plugin"]):
        if plugin["status"] != "ok" or not plugin["probes"]:
            continue
        for entry in plugins.probes_for([plugin["plugin"]]):
            data = ProbeResource.of(entry.probe, "bpf_object").read_bytes()
            with BpfObject.open_memory(data, entry.probe.name) as obj:
                found.append((plugin["plugin"], entry.probe.name, set(obj.maps)))
    return found


def test_only_tcp_objects_declare_the_socket_owner_map() -> None:
    probes = installed_probes()
    assert {plugin for plugin, _, _ in probes} >= {"cpu", "fs", "memory", "process", "storage", "tcp"}
    for plugin, probe, maps in probes:
        assert maps >= SHARED_MAPS, f"{probe}: every probe has the shared maps"
        assert (SOCKET_MAP in maps) == (plugin == "tcp"), f"{plugin}/{probe}: maps {sorted(maps)}"


@pytest.mark.parametrize("name", ["common.bpf.h", "sock.bpf.h"])
def test_packaged_header_copy_matches_the_source(name: str) -> None:
    """The copy an installed jalki builds third-party probes with has every header (sock.bpf.h ships)."""
    source = include_dirs() / "jalki" / name
    packaged = Path(__file__).resolve().parents[2] / "jalki_core" / "bpf_include" / "jalki" / name
    if not packaged.exists():
        pytest.skip("no packaged header copy in this checkout (made by 'bash scripts/setup.sh' / pip install)")
    assert packaged.read_text() == source.read_text(), "re-run 'bash scripts/setup.sh' to refresh the copy"


def test_common_header_declares_no_socket_service() -> None:
    common = (include_dirs() / "jalki" / "common.bpf.h").read_text()
    code = re.sub(r"/\*.*?\*/", "", common, flags=re.S)  # the comments may name sock.bpf.h
    for name in (SOCKET_MAP, "jalki_sk_", "jalki_owner_record", "jalki_owner_lookup", "JALKI_TCP_"):
        assert name not in code, name
