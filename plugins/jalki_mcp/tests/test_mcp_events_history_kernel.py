"""``get_events`` through MCP against a real daemon that holds 100,000 events: its output stays bounded.

The daemon (``jalki run --serve``, no probe deployed, so nothing new arrives) opens a SQLite history seeded
beforehand through the store's own writer (:class:`History`, the schema and ``seq`` numbering the daemon
writes), and numbers on from its highest ``seq``. The MCP server's tools reach it through the SDK over its
socket, and an in-memory MCP client calls them.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import jsonschema
import orjson
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests" / "kernel"))
from daemon_helpers import running_daemon
from jalki_mcp.server import build_server
from jalki_mcp.tools import DEFAULT_LIMIT, MAX_GROUPS, MAX_LIMIT, SCAN_EVENTS, JalkiTools
from mcp import Client

from jalki_core.daemon.store import History, HistoryLimits, encode_events, event_stamps, with_seq
from jalki_core.errors import UsageError

pytestmark = pytest.mark.kernel

COUNT = 100_000
DRAIN_BATCH = 256
"""Events per batch handed to the history, each batch of one probe, as the daemon's drain thread does."""
COMMANDS = ("curl", "postgres", "nginx", "java", "python3", "sshd", "node")
DESTINATIONS = [("10.0.0.5", 5432), ("10.0.0.9", 443), ("10.0.3.4", 80), ("192.168.1.20", 6379),
                ("fd00::7", 8080), ("10.0.0.5", 5433), ("10.0.9.1", 53), ("172.16.0.2", 9092),
                ("10.0.0.12", 3306), ("10.0.0.13", 27017), ("10.0.0.14", 11211), ("10.0.0.15", 2379)]
HISTORY = {"history": True}


def stamp_text(ns: int) -> str:
    seconds, fraction = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{fraction:09d}Z"


def make_events(count: int, first_ns: int) -> list[dict[str, Any]]:
    """``count`` events shaped like jalki-tcp's, one probe per drain batch, 1 ms apart (event ``n`` gets
    ``seq`` ``n + 1``)."""
    events = []
    for n in range(count):
        probe = "tcp_connect" if (n // DRAIN_BATCH) % 2 == 0 else "tcp_close"
        dst_ip, dst_port = DESTINATIONS[n % 13 % len(DESTINATIONS)]
        pid = 1000 + n % 11
        events.append({
            "id": f"5cb2ee39-{probe}-{n + 1}", "timestamp": stamp_text(first_ns + n * 1_000_000),
            "source": f"jalki/{probe}", "type": f"kernel.{probe.replace('_', '.')}", "severity": "info",
            "cluster": None, "node": "n1", "attach": "tp_btf",
            "network_data": {"src_ip": "10.0.0.1", "dst_ip": dst_ip, "src_port": 40000 + n % 20000,
                             "dst_port": dst_port, "protocol": "tcp"},
            "process_data": {"pid": pid, "tid": pid, "ppid": 1, "uid": 0, "command": COMMANDS[pid % len(COMMANDS)],
                             "cgroup_id": 4242},
            "data": {"state": "SYN_SENT", "family": "AF_INET6" if ":" in dst_ip else "AF_INET"},
        })
    return events


def seed_history(path: Path, events: Sequence[dict[str, Any]]) -> None:
    """Write ``events`` into a new history at ``path`` with ``seq`` 1, 2, …, as the daemon stores them."""
    history = History(path, HistoryLimits(queue_events=len(events), queue_bytes=1 << 30))
    history.start()
    seq = 1
    for start in range(0, len(events), DRAIN_BATCH):
        batch = events[start:start + DRAIN_BATCH]
        probe = str(batch[0]["source"]).removeprefix("jalki/")
        history.add(probe, batch, event_stamps(batch), with_seq(encode_events(batch), seq), seq)
        seq += len(batch)
    history.close()
    assert (history.written, history.dropped, history.errors) == (len(events), 0, 0), history.stats()


def expected_summary(events: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The summary ``get_events`` must give of ``events``: counts by type, destination and process, the busiest
    :data:`MAX_GROUPS` of each, most first and then by name."""
    def top(counter: Counter[str]) -> list[dict[str, Any]]:
        ranked = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_GROUPS]
        return [{"key": key, "events": n} for key, n in ranked]

    def address(event: dict[str, Any]) -> str:
        ip, port = event["network_data"]["dst_ip"], event["network_data"]["dst_port"]
        return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"

    return {"scanned": len(events), "by_type": top(Counter(e["type"] for e in events)),
            "by_destination": top(Counter(address(e) for e in events)),
            "by_process": top(Counter(f"{e['process_data']['command']} (pid {e['process_data']['pid']})"
                                      for e in events)),
            "by_pod": []}  # these events carry no k8s object


def test_get_events_output_is_bounded_on_100k_events(tmp_path: Path) -> None:
    history_path = tmp_path / "h.db"
    events = make_events(COUNT, time.time_ns() - COUNT * 1_000_000)  # the newest just now: within the age bound
    seed_history(history_path, events)
    by_seq = {n + 1: event for n, event in enumerate(events)}

    def seqs(result: Any) -> list[int]:
        return [event["seq"] for event in result.structured_content["events"]]

    with running_daemon(tmp_path, "--history", str(history_path)) as daemon:
        tools = JalkiTools(daemon.socket)

        async def calls() -> dict[str, Any]:
            async with Client(build_server(tools)) as client:
                schema = {t.name: t.output_schema for t in (await client.list_tools()).tools}["get_events"]
                results: dict[str, Any] = {"schema": schema, "status": await client.call_tool("status", {})}
                results["default"] = await client.call_tool("get_events", {"filters": HISTORY})
                results["most"] = await client.call_tool("get_events", {"filters": HISTORY, "limit": MAX_LIMIT})
                results["last"] = await client.call_tool(
                    "get_events", {"filters": HISTORY, "limit": MAX_LIMIT,
                                   "cursor": results["most"].structured_content["next_cursor"]})
                results["too_many"] = await client.call_tool("get_events", {"filters": HISTORY,
                                                                            "limit": MAX_LIMIT + 1})
                # page through all of it from the start: each page follows the last one listed
                pages: list[Any] = []
                cursor: int | None = 0
                while cursor is not None and len(pages) <= COUNT // MAX_LIMIT:
                    page = await client.call_tool("get_events", {"filters": HISTORY, "limit": MAX_LIMIT,
                                                                 "cursor": cursor})
                    pages.append(page)
                    cursor = page.structured_content["next_cursor"]
                results["pages"] = pages
                return results

        results = anyio.run(calls)
        with pytest.raises(UsageError, match="limit 501 is out of range"):
            anyio.run(lambda: tools.get_events(None, MAX_LIMIT + 1))

    status = results["status"].structured_content
    assert status["daemon"] is True and status["seq"] == COUNT, status  # numbering went on from the history's
    assert status["history_state"] == "ok", status

    # without a cursor: the newest SCAN_EVENTS are read and summarised, the oldest `limit` of them listed
    newest = list(range(COUNT - SCAN_EVENTS + 1, COUNT + 1))
    default, most, last = results["default"], results["most"], results["last"]
    assert seqs(default) == newest[:DEFAULT_LIMIT]
    assert seqs(most) == newest[:MAX_LIMIT]
    for result in (default, most):
        content = result.structured_content
        assert content["summary"] == expected_summary([by_seq[seq] for seq in newest])
        assert content["truncated"] is True and content["next_cursor"] == seqs(result)[-1]
    assert default.structured_content["summary"]["by_type"] == [  # 1000 events of alternating 256-event batches
        {"key": "kernel.tcp.close", "events": 512}, {"key": "kernel.tcp.connect", "events": 488}]
    # the page after the last listed ends the history: nothing more to list
    assert seqs(last) == newest[MAX_LIMIT:]
    assert last.structured_content["truncated"] is False and last.structured_content["next_cursor"] is None
    assert last.structured_content["summary"] == expected_summary([by_seq[seq] for seq in newest[MAX_LIMIT:]])

    # nothing skipped or repeated, and the walk ends with the history
    pages = results["pages"]
    assert [seq for page in pages for seq in seqs(page)] == list(range(1, COUNT + 1))
    assert len(pages) == COUNT // MAX_LIMIT
    for index, page in enumerate(pages):
        content = page.structured_content
        read = list(range(index * MAX_LIMIT + 1, min(index * MAX_LIMIT + SCAN_EVENTS, COUNT) + 1))
        assert content["summary"] == expected_summary([by_seq[seq] for seq in read])
        more = index + 1 < len(pages)
        assert content["truncated"] is more and content["next_cursor"] == ((index + 1) * MAX_LIMIT if more else None)
        assert content["events"] == [{**by_seq[seq], "seq": seq} for seq in seqs(page)]  # the events as stored

    for result in (default, most, last, *pages):
        content = result.structured_content
        assert not result.is_error and content["daemon"] is True
        jsonschema.validate(content, results["schema"])
        assert content["returned"] == len(content["events"]) <= MAX_LIMIT
        # no probe is deployed and no subscriber was slow: the daemon lost nothing these counts cover
        assert content["dropped"] == 0 and content["dropped_by_cause"] == {}
        assert len(orjson.dumps(content)) < 400_000  # at most 500 events of ~600 bytes, and the summary
        assert len(result.content[0].text) < 300
    assert len(results["default"].structured_content["summary"]["by_destination"]) == MAX_GROUPS

    too_many = results["too_many"]
    assert too_many.is_error and "less than or equal to 500" in too_many.content[0].text
