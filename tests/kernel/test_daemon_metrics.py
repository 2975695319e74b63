"""The daemon's Prometheus exposition and the robustness of its socket API, against the real daemon.

- every metric family of ``jalki_core/daemon/metrics.py`` moves when what it
  counts happens, with exact values where the test knows them (events,
  sampled drops, emitter and history totals, API requests), and
  ``/healthz``/``/readyz`` say alive and ready at the right times;
- a real Prometheus server (Debian's ``prometheus``) scrapes the daemon and
  its query API returns the jalki series with the right values;
- hypothesis throws random and malformed frames at the socket: every reply is
  a valid ok/error frame with the request's id, and the daemon keeps serving
  with its probes attached.

Every probe is deployed with a port filter on a port only this test uses, so
the counts are exact on a machine where other people make TCP traffic.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import sqlite3
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from daemon_helpers import Daemon, free_port, running_daemon, wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from netns_helpers import NetNs
from prometheus_client.parser import text_string_to_metric_families
from tcp_helpers import drop_input_rule

import jalki_core.daemon.metrics as metrics_module
from jalki_core.daemon.protocol import ERROR_CODES, MAX_FRAME_BYTES, MAX_ID_CHARS, PROTOCOL_VERSION

pytestmark = pytest.mark.kernel

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

# Refused (nothing listens), served, and SYN-dropped ports inside the test's namespace: below the ephemeral
# range (32768-60999), so no other connection on the machine has one of them as its source port.
REFUSED_PORT = 29_101
SERVED_PORT = 29_102
DROPPED_PORT = 29_103
FLOOD_CONNECTS = 15_000  # > the 10,000-event subscriber queue: a subscriber that never reads loses events
SAMPLED_CONNECTS = 400
LOCKED_CONNECTS = 50
CLOSE_CLIENTS = 5


def metric_families_in_source() -> set[str]:
    """Every metric family metrics.py defines (the test must cover each one)."""
    source = Path(metrics_module.__file__).read_text()
    return set(re.findall(r'MetricFamily\(\s*"(jalki_\w+)"', source))


def scrape(base_url: str) -> Samples:
    """``/metrics`` as {(sample name, sorted labels): value}."""
    with urllib.request.urlopen(f"{base_url}/metrics", timeout=30) as response:
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def families(samples: Samples) -> set[str]:
    return {name.removesuffix("_total") for name, _ in samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 when absent (a counter that never moved has no labelled sample yet)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(v for (n, lbls), v in samples.items()
               if n == name and set(labels.items()) <= set(lbls))


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


class Reader:
    """A subscriber on a raw connection that reads its pushes on a thread and counts the events."""

    def __init__(self, daemon: Daemon) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(str(daemon.socket))
        self.sock.sendall(b'{"v":1,"id":"sub","type":"subscribe"}\n')
        self.events = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with contextlib.suppress(OSError, ValueError), self.sock.makefile("rb") as stream:
            for line in stream:
                if orjson.loads(line).get("push") == "event":
                    self.events += 1

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the reading thread
        self.thread.join(10)
        self.sock.close()


# ---------------------------------------------------------------------------
# (a) every metric moves
# ---------------------------------------------------------------------------


def test_every_metric_family_moves_with_exact_counts(tmp_path: Path, netns: NetNs) -> None:
    events_file = tmp_path / "events.ndjson"
    with running_daemon(tmp_path, "--emit", "file:/dev/full", "--emit", f"file:{events_file}",
                        metrics=True) as daemon:
        url = daemon.metrics_url
        assert url is not None and daemon.history is not None
        assert http_status(f"{url}/healthz") == 200
        assert http_status(f"{url}/readyz") == 503, "ready with no probe attached"
        assert http_status(f"{url}/nothing") == 404
        before = scrape(url)
        assert value(before, "jalki_ready") == 0
        assert value(before, "jalki_subscribers") == 0

        with daemon.client() as client:
            rungs = {probe: client.deploy(probe, port=port)["attach"] for probe, port in
                     (("tcp_connect", REFUSED_PORT), ("tcp_close", SERVED_PORT),
                      ("tcp_retransmit_skb", DROPPED_PORT))}
            with pytest.raises(Exception, match="unknown_probe"):
                client.deploy("no_such_probe")
        assert all(rungs.values()), rungs
        assert http_status(f"{url}/readyz") == 200
        assert http_status(f"{url}/healthz") == 200

        # subscribers: one reads everything, one never reads (it must lose events, counted)
        reader = Reader(daemon)
        idle = daemon.client(timeout=60)
        idle.request("subscribe")
        with socket.socket(socket.AF_UNIX) as raw:  # one malformed frame: an API request with outcome bad_frame
            raw.connect(str(daemon.socket))
            raw.sendall(b"not json\n")
            assert orjson.loads(raw.makefile("rb").readline())["error"]["code"] == "bad_frame"
        wait_for(lambda: value(scrape(url), "jalki_subscribers") == 2, what="2 subscribers")

        # traffic: refused connects (tcp_connect), served connections (tcp_close), a dropped SYN (retransmit)
        netns.nft(drop_input_rule(f"tcp dport {DROPPED_PORT}"))
        netns.server("--port", str(SERVED_PORT))
        for _ in range(CLOSE_CLIENTS):
            netns.traffic("client", "--port", str(SERVED_PORT), "--send", "100")
        syn = netns.traffic("connect", "--port", str(DROPPED_PORT), "--timeout", "1.5")
        assert [r["error"] for r in syn["results"]] == ["ETIMEDOUT"]
        flood = netns.traffic("connect", "--port", str(REFUSED_PORT), "--count", str(FLOOD_CONNECTS), timeout=240)
        assert {r["error"] for r in flood["results"]} == {"ECONNREFUSED"}

        def events_since_start(samples: Samples) -> float:
            return total(samples, "jalki_events_total") - total(before, "jalki_events_total")

        def history_caught_up(samples: Samples) -> bool:
            history = value(samples, "jalki_history_written_total") + total(samples, "jalki_history_dropped_total")
            return history == events_since_start(samples)

        def connects(samples: Samples) -> float:
            return value(samples, "jalki_events_total", probe="tcp_connect", type="kernel.tcp.connect") - value(
                before, "jalki_events_total", probe="tcp_connect", type="kernel.tcp.connect")

        def closes(samples: Samples) -> float:
            return value(samples, "jalki_events_total", probe="tcp_close", type="kernel.tcp.close")

        def retransmits(samples: Samples) -> float:
            return value(samples, "jalki_events_total", probe="tcp_retransmit_skb", type="kernel.tcp.retransmit")

        wait_for(lambda: (lambda s: connects(s) >= FLOOD_CONNECTS and closes(s) >= 2 * CLOSE_CLIENTS
                          and retransmits(s) >= 1)(scrape(url)), timeout=60, what="the traffic's events")
        time.sleep(1)  # nothing more may arrive
        # the metrics port's own families: a client holding a half-sent request during this scrape, then leaving
        host, port = url.removeprefix("http://").rsplit(":", 1)
        half = socket.create_connection((host, int(port)))
        half.sendall(b"GET /metrics HTTP/1.1\r\n")
        wait_for(lambda: value(scrape(url), "jalki_metrics_connections") >= 2, timeout=10,
                 what="the half-sent request to count as an open connection")
        after = scrape(url)
        half.close()
        wait_for(lambda: value(scrape(url), "jalki_metrics_connections_closed_total", reason="disconnect") >= 1,
                 timeout=10, what="the client that left to be counted")
        # each connection closes on both sides (client and server socket), both have the served port
        assert (connects(after), closes(after)) == (FLOOD_CONNECTS, 2 * CLOSE_CLIENTS)
        for probe, rung in rungs.items():
            assert value(after, "jalki_probe_attached", probe=probe, rung=rung) == 1
            assert value(after, "jalki_program_runs_total", probe=probe) > 0
            assert value(after, "jalki_program_run_time_seconds_total", probe=probe) > 0
            causes = ("ringbuf_full", "sampled", "tracking_full", "recursion_miss", "size_mismatch", "decode_error")
            for cause in causes:
                assert (("jalki_drops_total", (("cause", cause), ("probe", probe))) in after
                        and value(after, "jalki_drops_total", probe=probe, cause=cause) == 0), (probe, cause)
        # the peak since the previous scrape: the flood is drained by now (test_daemon_bounds.py sees a backlog)
        fill = value(after, "jalki_ringbuffer_fill_ratio", probe="tcp_connect")
        assert (("jalki_ringbuffer_fill_ratio", (("probe", "tcp_connect"),)) in after) and 0 <= fill <= 1
        assert value(after, "jalki_ready") == 1

        # subscribers: the reader got events, the idle one lost some; the totals stay after they leave
        wait_for(lambda: reader.events >= FLOOD_CONNECTS // 2, timeout=30, what="the reader's events")
        assert value(after, "jalki_subscriber_events_sent_total") > 0
        dropped = value(after, "jalki_subscriber_dropped_total")
        assert dropped > 0, "a subscriber that never reads lost nothing"
        reader.close()
        idle.close()
        wait_for(lambda: value(scrape(url), "jalki_subscribers") == 0, what="the subscribers to leave")
        left = scrape(url)
        assert value(left, "jalki_subscriber_dropped_total") >= dropped
        assert value(left, "jalki_subscriber_events_sent_total") >= value(after, "jalki_subscriber_events_sent_total")

        # history: once it has caught up, hold the database's write lock so writes fail (dropped and errors
        # move), then release it
        wait_for(lambda: history_caught_up(scrape(url)), timeout=60, what="the history to catch up")
        locker = sqlite3.connect(daemon.history, timeout=10, isolation_level=None)
        try:
            locker.execute("BEGIN EXCLUSIVE")
            netns.traffic("connect", "--port", str(REFUSED_PORT), "--count", str(LOCKED_CONNECTS))
            wait_for(lambda: value(scrape(url), "jalki_history_errors_total") >= 1, timeout=30,
                     what="a failed history write")
        finally:
            locker.close()  # rolls the lock's transaction back

        # sampled drops: redeploy with sample=0.5; every attempt is either an event or a sampled drop
        mid = scrape(url)
        with daemon.client() as client:
            assert client.deploy("tcp_connect", port=REFUSED_PORT, sample=0.5)["changed"] is True
        netns.traffic("connect", "--port", str(REFUSED_PORT), "--count", str(SAMPLED_CONNECTS))

        def sampled_phase(samples: Samples) -> tuple[float, float]:
            kept = connects(samples) - connects(mid)
            sampled = value(samples, "jalki_drops_total", probe="tcp_connect", cause="sampled")
            return kept, sampled

        wait_for(lambda: sum(sampled_phase(scrape(url))) >= SAMPLED_CONNECTS, timeout=30, what="sampled phase")
        time.sleep(0.5)
        kept, sampled = sampled_phase(scrape(url))
        assert kept + sampled == SAMPLED_CONNECTS and kept > 0 and sampled > 0, (kept, sampled)
        runs_before_undeploy = value(scrape(url), "jalki_program_runs_total", probe="tcp_connect")

        # undeploy everything: not ready, attached 0 (rung none), counters keep their totals
        with daemon.client() as client:
            for probe in rungs:
                client.undeploy(probe)
        assert http_status(f"{url}/readyz") == 503
        assert http_status(f"{url}/healthz") == 200

        def settled(samples: Samples) -> bool:
            full = value(samples, "jalki_emitter_events_total", emitter="file") + total(
                samples, "jalki_emitter_dropped_total", emitter="file")
            good = value(samples, "jalki_emitter_events_total", emitter="file#2")
            return history_caught_up(samples) and full == good == events_since_start(samples) > 0

        wait_for(lambda: settled(scrape(url)), timeout=30, what="history and emitters to account for every event")
        end = scrape(url)
        assert value(end, "jalki_ready") == 0
        for probe in rungs:
            assert value(end, "jalki_probe_attached", probe=probe, rung="none") == 0
            assert ("jalki_probe_attached", (("probe", probe), ("rung", rungs[probe]))) not in end
        assert value(end, "jalki_drops_total", probe="tcp_connect", cause="sampled") == sampled
        assert value(end, "jalki_program_runs_total", probe="tcp_connect") >= runs_before_undeploy
        assert connects(end) == FLOOD_CONNECTS + LOCKED_CONNECTS + kept
        # emitters: /dev/full fails (errors, dropped), the real file writes everything
        assert value(end, "jalki_emitter_errors_total", emitter="file") > 0
        assert total(end, "jalki_emitter_dropped_total", emitter="file") > 0
        assert value(end, "jalki_emitter_errors_total", emitter="file#2") == 0
        assert total(end, "jalki_emitter_dropped_total", emitter="file#2") == 0
        # history: the locked writes were dropped and counted, the rest written
        assert total(end, "jalki_history_dropped_total") >= 1
        assert value(end, "jalki_history_errors_total") >= 1
        assert value(end, "jalki_history_written_total") >= FLOOD_CONNECTS
        # API requests by type and outcome
        assert value(end, "jalki_api_requests_total", type="deploy", outcome="ok") == 4
        assert value(end, "jalki_api_requests_total", type="deploy", outcome="unknown_probe") == 1
        assert value(end, "jalki_api_requests_total", type="undeploy", outcome="ok") == 3
        assert value(end, "jalki_api_requests_total", type="subscribe", outcome="ok") == 2
        assert value(end, "jalki_api_requests_total", type="?", outcome="bad_frame") == 1

        # every family metrics.py defines was seen, and each one moved; per-probe gauges (ring fill) have a
        # sample only while a probe is attached, and the last one is undeployed by now, so both snapshots count
        expected = metric_families_in_source()
        seen = families(after) | families(end)
        assert seen >= expected, expected - seen
        moved = {n.removesuffix("_total") for snapshot in (after, end) for (n, lbls), v in snapshot.items()
                 if v != before.get((n, lbls))}
        assert moved >= expected, expected - moved


# ---------------------------------------------------------------------------
# one daemon for the Prometheus and fuzz tests
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A daemon with tcp_connect deployed on REFUSED_PORT and metrics on a free port."""
    tmp = tmp_path_factory.mktemp("daemon")
    with running_daemon(tmp, "-p", "tcp_connect", "--port", str(REFUSED_PORT), metrics=True) as daemon:
        yield daemon


def probes_attached(daemon: Daemon) -> dict[str, Any]:
    with daemon.client() as client:
        status = client.status()
    return {name: probe["attach"] for name, probe in status["probes"].items()}


# ---------------------------------------------------------------------------
# (b) a real Prometheus server scrapes the daemon
# ---------------------------------------------------------------------------

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


@contextlib.contextmanager
def prometheus_server(tmp: Path, target: str) -> Iterator[str]:
    """Debian's prometheus on a free loopback port scraping ``target`` every second; yields its URL."""
    config = tmp / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: jalki\n    scrape_interval: 1s\n    scrape_timeout: 1s\n"
        f"    static_configs:\n      - targets: ['{target}']\n"
    )
    port = free_port()
    log = (tmp / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: proc.poll() is not None or (_listening(port) and http_status(f"{url}/-/ready") == 200),
                 timeout=60, what="prometheus to be ready")
        assert proc.poll() is None, (tmp / "prometheus.log").read_text()[-2000:]
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def prom_query(url: str, query: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': query})}",
                                timeout=10) as response:
        body = orjson.loads(response.read())
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


@pytest.mark.skipif(not Path(PROMETHEUS).exists(), reason="prometheus is not installed (scripts/setup.sh)")
def test_prometheus_scrapes_the_daemon(shared_daemon: Daemon, netns: NetNs, tmp_path: Path) -> None:
    assert shared_daemon.metrics_url is not None
    target = shared_daemon.metrics_url.removeprefix("http://")
    base = value(scrape(shared_daemon.metrics_url), "jalki_events_total", probe="tcp_connect",
                 type="kernel.tcp.connect")
    connects = 37
    netns.traffic("connect", "--port", str(REFUSED_PORT), "--count", str(connects))
    expected = base + connects
    wait_for(lambda: value(scrape(shared_daemon.metrics_url), "jalki_events_total", probe="tcp_connect",
                           type="kernel.tcp.connect") == expected, timeout=30, what="the daemon's own count")
    with prometheus_server(tmp_path, target) as prom:
        def series() -> list[dict[str, Any]]:
            return prom_query(prom, 'jalki_events_total{type="kernel.tcp.connect"}')

        def has_expected() -> bool:
            found = series()
            return len(found) == 1 and float(found[0]["value"][1]) == expected

        wait_for(has_expected, timeout=60, interval=0.5, what=f"prometheus to see {expected} connect events")
        [found] = series()
        assert found["metric"]["probe"] == "tcp_connect"
        assert found["metric"]["job"] == "jalki" and found["metric"]["instance"] == target
        [up] = prom_query(prom, 'up{job="jalki"}')
        assert up["value"][1] == "1"
        [attached] = prom_query(prom, 'jalki_probe_attached{probe="tcp_connect"}')
        assert attached["value"][1] == "1" and attached["metric"]["rung"] in ("fexit", "tp_btf", "tracepoint")
        [ready] = prom_query(prom, "jalki_ready")
        assert ready["value"][1] == "1"
        names = {s["metric"]["__name__"] for s in prom_query(prom, '{__name__=~"jalki_.+"}')}
        # labelled families with no sample yet (e.g. no API request made) are absent from the query
        assert {"jalki_events_total", "jalki_drops_total", "jalki_program_runs_total",
                "jalki_program_run_time_seconds_total", "jalki_ringbuffer_fill_ratio", "jalki_subscribers",
                "jalki_subscriber_events_sent_total", "jalki_subscriber_dropped_total",
                "jalki_history_written_total", "jalki_history_dropped_total", "jalki_history_errors_total",
                "jalki_ready", "jalki_probe_attached"} <= names, names
        [drops] = prom_query(prom, 'jalki_drops_total{probe="tcp_connect",cause="ringbuf_full"}')
        assert drops["value"][1] == "0"


# ---------------------------------------------------------------------------
# (c) protocol fuzzing over the real socket
# ---------------------------------------------------------------------------

SAFE_TYPES = ("ping", "status", "probes", "get_events", "recent", "subscribe", "unsubscribe", "deploy",
              "undeploy", "nope", "")
"""Types a fuzzed envelope may carry. ``ask`` runs an observation (seconds) and is left out; deploy and
undeploy only ever name probes that do not exist (see :func:`_fields`), so the daemon's probe stays."""

json_scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False,
                                                                                        allow_infinity=False)
                | st.text() | st.sampled_from([2**32, 2**63, 2**64 - 1, 1e308, "9999-12-31T23:59:59Z"]))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
FIELD_NAMES = ("probe", "sample", "pid", "port", "ttl", "limit", "since", "event_type", "command", "src_ip",
               "dst_ip", "src_port", "dst_port", "subscription", "question", "seconds")


def _fields(draw: st.DrawFn) -> dict[str, Any]:
    fields = draw(st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=10), json_values, max_size=5))
    if isinstance(fields.get("probe"), str):
        fields["probe"] = "fuzz-" + fields["probe"]  # never an installed probe: tcp_connect stays deployed
    return fields


@st.composite
def envelopes(draw: st.DrawFn) -> bytes:
    """A request-shaped JSON object: v 1 (mostly), an id of any JSON type, a type, random fields."""
    message: dict[str, Any] = _fields(draw)
    message["v"] = draw(st.sampled_from([PROTOCOL_VERSION] * 4 + [0, 2, "1", None, True, 1.5]))
    if draw(st.booleans()):
        message["id"] = draw(json_values | st.text(min_size=MAX_ID_CHARS - 1, max_size=MAX_ID_CHARS + 1)
                             | st.integers(2**63, 2**64 - 1))
    message["type"] = draw(st.sampled_from(SAFE_TYPES) | json_values)
    return orjson.dumps(message)


HUGE = (MAX_FRAME_BYTES + 1, MAX_FRAME_BYTES + 4096, 2 * MAX_FRAME_BYTES)

frames = st.one_of(
    envelopes(),
    envelopes(),
    st.binary(max_size=200).map(lambda b: b.replace(b"\n", b" ")),
    json_values.map(orjson.dumps),
    st.builds(lambda size, fill: b'{"v":1,"id":"huge","type":"ping","pad":"' + fill * size,
              st.sampled_from(HUGE), st.sampled_from([b"x", b" ", b"\xff"])),
    st.just(b"   "),
)


@st.composite
def sessions(draw: st.DrawFn) -> tuple[list[bytes], bool]:
    """Frames for one connection, and whether the last one is left without its newline."""
    return draw(st.lists(frames, min_size=1, max_size=8)), draw(st.booleans())


def expected_reply(line: bytes) -> tuple[bool, Any, str | None]:
    """(replied?, the id the reply must carry, the error code it must carry or None when not known)."""
    if not line.strip():
        return False, None, None
    if len(line) + 1 > MAX_FRAME_BYTES:
        return True, None, "frame_too_large"
    try:
        message = orjson.loads(line)
    except orjson.JSONDecodeError:
        return True, None, "bad_frame"
    if not isinstance(message, dict):
        return True, None, "bad_frame"
    request_id = message.get("id")
    if isinstance(request_id, dict | list) or (isinstance(request_id, str) and len(request_id) > MAX_ID_CHARS):
        return True, None, "bad_request"
    version = message.get("v")
    if version != PROTOCOL_VERSION or isinstance(version, bool):
        return True, request_id, "unsupported_version"
    kind = message.get("type")
    if not isinstance(kind, str):
        return True, request_id, "bad_request"
    if kind not in ("ping", "status", "probes", "get_events", "recent", "subscribe", "unsubscribe", "deploy",
                    "undeploy", "ask"):
        return True, request_id, "unknown_type"
    return True, request_id, None


def exchange(daemon: Daemon, payload: bytes, close_early: bool) -> list[dict[str, Any]]:
    """Send ``payload`` on a new connection (a writer thread), half-close, and read every frame until EOF."""
    with socket.socket(socket.AF_UNIX) as conn:
        conn.settimeout(60)
        conn.connect(str(daemon.socket))

        def send() -> None:
            with contextlib.suppress(OSError):
                conn.sendall(payload)
                conn.shutdown(socket.SHUT_WR)

        writer = threading.Thread(target=send, daemon=True)
        writer.start()
        if close_early:  # the client goes away without reading anything
            writer.join(60)
            return []
        data = bytearray()
        while chunk := conn.recv(1 << 20):
            data += chunk
        writer.join(60)
    assert data.endswith(b"\n") or not data, data[-200:]
    return [orjson.loads(line) for line in bytes(data).split(b"\n") if line]


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), derandomize=False)
@given(session=sessions(), close_early=st.sampled_from([False] * 5 + [True]))
def test_fuzzed_frames_get_valid_replies_and_the_daemon_keeps_serving(
    shared_daemon: Daemon, session: tuple[list[bytes], bool], close_early: bool
) -> None:
    lines, partial_last = session
    payload = b"\n".join(lines) + (b"" if partial_last else b"\n")
    replies = [m for m in exchange(shared_daemon, payload, close_early) if "push" not in m]
    if not close_early:
        expected = [expected_reply(line) for line in payload.split(b"\n")]
        expected = [e for e in expected if e[0]]
        assert len(replies) == len(expected), (replies, expected)
        for reply, (_, request_id, code) in zip(replies, expected, strict=True):
            assert reply.get("v") == PROTOCOL_VERSION, reply
            assert reply.get("id") == request_id and type(reply.get("id")) is type(request_id), (reply, request_id)
            assert isinstance(reply.get("ok"), bool), reply
            if reply["ok"]:
                assert code is None and "result" in reply, reply
            else:
                error = reply.get("error")
                assert isinstance(error, dict) and error.get("code") in ERROR_CODES, reply
                assert isinstance(error.get("message"), str) and error["message"], reply
                assert error["code"] != "internal", reply
                if code is not None:
                    assert error["code"] == code, (reply, code)
    with shared_daemon.client(timeout=10) as client:
        assert client.ping()["pong"] is True


def test_daemon_serves_after_fuzzing(shared_daemon: Daemon) -> None:
    """Runs after the fuzz test: a fresh connection works and the probe is still attached."""
    with shared_daemon.client(timeout=10) as client:
        assert client.ping()["pong"] is True
    attached = probes_attached(shared_daemon)
    assert attached.get("tcp_connect") in ("fexit", "tp_btf", "tracepoint"), attached
    assert shared_daemon.proc.poll() is None


def test_frame_size_limit_is_exact(shared_daemon: Daemon) -> None:
    """A frame of exactly MAX_FRAME_BYTES (newline included) is served; one byte more is refused."""
    head = b'{"v":1,"id":1,"type":"ping","pad":"'
    fits = head + b"x" * (MAX_FRAME_BYTES - len(head) - 3) + b'"}'
    assert len(fits) + 1 == MAX_FRAME_BYTES
    [reply] = exchange(shared_daemon, fits + b"\n", False)
    assert reply["ok"] is True and reply["id"] == 1
    too_big = head + b"x" * (MAX_FRAME_BYTES - len(head) - 2) + b'"}'
    assert len(too_big) + 1 == MAX_FRAME_BYTES + 1
    replies = exchange(shared_daemon, too_big + b"\n" + b'{"v":1,"id":2,"type":"ping"}\n', False)
    assert [r.get("id") for r in replies] == [None, 2], replies
    assert replies[0]["ok"] is False and replies[0]["error"]["code"] == "frame_too_large"
    assert replies[1]["ok"] is True
