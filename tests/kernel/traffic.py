"""Traffic generator run by the kernel tests inside a network namespace.

Each sub-command prints one JSON line describing what it did (its pid, the
local port it used, the errno it met) so the test can match kernel events
against ground truth.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import json
import os
import select
import socket
import struct
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def report(**fields: object) -> None:
    print(json.dumps({"pid": os.getpid(), **fields}), flush=True)


def serve(args: argparse.Namespace) -> None:
    """Accept connections; read until EOF, answer with --reply bytes, close."""
    with socket.socket(_family(args.host), socket.SOCK_STREAM) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((args.host, args.port))
        listener.listen(128)
        report(ready=True, port=listener.getsockname()[1])
        while True:
            conn, _ = listener.accept()
            with conn:
                if args.hold:
                    time.sleep(args.hold)
                    continue
                while conn.recv(65536):
                    pass
                if args.reply:
                    conn.sendall(b"r" * args.reply)


def reply_after_go(args: argparse.Namespace) -> None:
    """Accept one connection, read --request bytes, wait for --go-file, send --reply bytes, linger."""
    with socket.socket(_family(args.host), socket.SOCK_STREAM) as listener:
        listener.bind((args.host, 0))
        listener.listen(1)
        report(ready=True, port=listener.getsockname()[1])
        conn = _accept_and_read(listener, args.request)
        _wait_for(args.go_file)
        conn.sendall(b"r" * args.reply)
        time.sleep(args.linger)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        conn.close()


def request_and_wait(args: argparse.Namespace) -> None:
    """Connect, send --send bytes, report, then keep reading for --linger seconds."""
    conn = socket.create_connection((args.host, args.port), timeout=10)
    conn.sendall(b"q" * args.send)
    report(sport=conn.getsockname()[1])
    conn.settimeout(args.linger)
    try:
        while conn.recv(65536):
            pass
    except TimeoutError:
        pass
    conn.close()


def client(args: argparse.Namespace) -> None:
    """Connect, send --send bytes, wait until they are acknowledged, half-close, read the reply to EOF, close.

    The wait makes the server's ACK reach an ESTABLISHED socket: tcp:tcp_probe samples only there, and under
    load a loopback softirq may otherwise deliver it after shutdown(), to FIN_WAIT1 (no RTT sample).
    """
    with socket.create_connection((args.host, args.port), timeout=10) as conn:
        sport = conn.getsockname()[1]
        conn.sendall(b"s" * args.send)
        _wait_acked(conn, deadline=time.monotonic() + 10)
        conn.shutdown(socket.SHUT_WR)
        received = 0
        while chunk := conn.recv(65536):
            received += len(chunk)
    report(sport=sport, sent=args.send, received=received)


def connect(args: argparse.Namespace) -> None:
    """Try --count connects; report each errno name and local port."""
    results = []
    for _ in range(args.count):
        sock = socket.socket(_family(args.host), socket.SOCK_STREAM)
        sock.settimeout(args.timeout)
        try:
            sock.connect((args.host, args.port))
            results.append({"sport": sock.getsockname()[1], "error": None})
        except OSError as exc:
            code = exc.errno if exc.errno is not None else errno.ETIMEDOUT
            results.append({"sport": sock.getsockname()[1], "error": errno.errorcode.get(code, str(code))})
        finally:
            sock.close()
    report(results=results)


def lossy_sender(args: argparse.Namespace) -> None:
    """Connect, wait for --go-file, then send data that the network drops; linger for retransmits."""
    conn = socket.create_connection((args.host, args.port), timeout=10)
    report(sport=conn.getsockname()[1], connected=True)
    _wait_for(args.go_file)
    conn.sendall(b"x" * args.send)
    time.sleep(args.linger)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")  # RST on close
    conn.close()


def _accept_and_read(listener: socket.socket, nbytes: int) -> socket.socket:
    """Accept one connection and read exactly ``nbytes`` from it."""
    conn, _ = listener.accept()
    got = 0
    while got < nbytes:
        got += len(conn.recv(nbytes - got))
    return conn


def _wait_for(path: str, limit: float = 20) -> None:
    go = Path(path)
    deadline = time.monotonic() + limit
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.02)


def _recv_to_eof(conn: socket.socket) -> int:
    received = 0
    while chunk := conn.recv(65536):
        received += len(chunk)
    return received


def preopen_client(args: argparse.Namespace) -> None:
    """Connect and send --before bytes; report; wait for --go-file; send --after bytes, half-close,
    read the reply to EOF, close; report again."""
    conn = socket.create_connection((args.host, args.port), timeout=10)
    sport = conn.getsockname()[1]
    conn.sendall(b"b" * args.before)
    report(sport=sport, connected=True)
    _wait_for(args.go_file)
    conn.sendall(b"a" * args.after)
    conn.shutdown(socket.SHUT_WR)
    received = _recv_to_eof(conn)
    conn.close()
    report(sport=sport, sent=args.before + args.after, received=received)


def heal_client(args: argparse.Namespace) -> None:
    """Connect; report; wait for --go-file, send --send bytes (the test drops them for a while);
    wait for --heal-file, half-close, read the reply to EOF, close; report again."""
    conn = socket.create_connection((args.host, args.port), timeout=10)
    sport = conn.getsockname()[1]
    report(sport=sport, connected=True)
    _wait_for(args.go_file)
    conn.sendall(b"h" * args.send)
    _wait_for(args.heal_file)
    conn.shutdown(socket.SHUT_WR)
    conn.settimeout(30)
    received = _recv_to_eof(conn)
    conn.close()
    report(sport=sport, sent=args.send, received=received)


def close_unread_server(args: argparse.Namespace) -> None:
    """Accept one connection, read exactly --request bytes, wait until more has arrived, and
    close with that data unread (the kernel answers with a RST)."""
    with socket.socket(_family(args.host), socket.SOCK_STREAM) as listener:
        listener.bind((args.host, 0))
        listener.listen(1)
        report(ready=True, port=listener.getsockname()[1])
        conn = _accept_and_read(listener, args.request)
        conn.settimeout(10)
        conn.recv(1, socket.MSG_PEEK)  # more has arrived; it stays unread
        conn.close()


def send_until_reset(args: argparse.Namespace) -> None:
    """Connect, send --send bytes, read until the peer resets (or closes); report."""
    conn = socket.create_connection((args.host, args.port), timeout=10)
    sport = conn.getsockname()[1]
    conn.sendall(b"u" * args.send)
    outcome = "eof"
    try:
        _recv_to_eof(conn)
    except ConnectionResetError:
        outcome = "reset"
    conn.close()
    report(sport=sport, outcome=outcome)


def _tcp_state(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]


def simultaneous_open(args: argparse.Namespace) -> None:
    """Two bound sockets A and B; report their ports; wait for --go-file (the test then drops
    every packet from A); A connects to B, B to A: B's SYN moves A from SYN_SENT to SYN_RECV and
    A's SYN-ACK is lost. Both are closed before any retransmission; report A's state before."""
    a = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    a.bind((args.host, 0))
    b.bind((args.host, 0))
    a_port, b_port = a.getsockname()[1], b.getsockname()[1]
    report(a_port=a_port, b_port=b_port)
    _wait_for(args.go_file)
    a.setblocking(False)
    b.setblocking(False)
    a.connect_ex((args.host, b_port))
    b.connect_ex((args.host, a_port))
    deadline = time.monotonic() + 0.5
    while _tcp_state(a) != 3 and time.monotonic() < deadline:  # TCP_SYN_RECV
        time.sleep(0.005)
    a_state, b_state = _tcp_state(a), _tcp_state(b)
    a.close()
    b.close()
    report(a_port=a_port, b_port=b_port, a_state=a_state, b_state=b_state)


def stale_owner(args: argparse.Namespace) -> None:
    """Socket memory reuse (one CPU): a child process reads from its socket after the connection
    ended (its state is CLOSE), then closes it; the next accepted socket, likely at the same
    address, is owned by this process. Report; wait for --go-file; send on it (the test drops
    the peer's input: retransmits), linger."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    first = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    first.bind((args.host, 0))
    first.listen(8)
    second = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    second.bind((args.host, 0))
    second.listen(8)
    peer = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    child = os.fork()
    if child == 0:
        conn = socket.create_connection((args.host, first.getsockname()[1]))
        conn.sendall(b"hi")
        conn.shutdown(socket.SHUT_WR)
        time.sleep(0.5)  # the reply and the FIN arrive: FIN_WAIT2 -> CLOSE, reply unread
        conn.recv(1000)  # a read on a socket in CLOSE
        conn.close()
        os._exit(0)
    accepted, _ = first.accept()
    while accepted.recv(100):
        pass
    accepted.sendall(b"r" * 100)
    accepted.close()
    os.waitpid(child, 0)
    peer.connect((args.host, second.getsockname()[1]))
    conn, _ = second.accept()
    peer.sendall(b"hello")
    conn.recv(100)
    report(child=child, parent=os.getpid(), sport=second.getsockname()[1], cport=peer.getsockname()[1])
    _wait_for(args.go_file)
    conn.sendall(b"x" * 1000)
    time.sleep(args.linger)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
    conn.close()


def bulk_sender(args: argparse.Namespace) -> None:
    """Connect, report, send bulk data for --seconds (the test's queue on the path sets the RTT), close."""
    conn = socket.create_connection((args.host, args.port), timeout=30)
    sport = conn.getsockname()[1]
    report(sport=sport, connected=True)
    chunk = b"b" * 16384
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        conn.sendall(chunk)
    conn.close()
    report(sport=sport, done=True)


def connect_modes(args: argparse.Namespace) -> None:
    """Wait for --go-file if given; then --count rounds of one connect per --modes entry
    (comma-separated), each on a new socket: ``blocking``; ``nonblocking`` (connect() returns
    EINPROGRESS or an error at once; after EINPROGRESS wait for the outcome and call connect()
    again, which returns an asynchronous error a second time); ``bound`` (blocking, after bind()
    to an ephemeral port); ``udp`` (a datagram socket). Report each errno name (null on
    success), the first call's errno name and the local port."""
    if args.go_file:
        report(waiting=True)
        _wait_for(args.go_file)
    family = _family(args.host)
    results = []
    for _ in range(args.count):
        for mode in args.modes.split(","):
            sock = socket.socket(family, socket.SOCK_DGRAM if mode == "udp" else socket.SOCK_STREAM)
            try:
                if mode == "bound":
                    sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
                sock.setblocking(mode != "nonblocking")
                first = code = sock.connect_ex((args.host, args.port))
                if mode == "nonblocking" and code == errno.EINPROGRESS:
                    select.select([], [sock], [], args.timeout)
                    code = sock.connect_ex((args.host, args.port))
                    code = 0 if code == errno.EISCONN else code
                results.append({"mode": mode, "error": errno.errorcode.get(code, str(code)) if code else None,
                                "first": errno.errorcode.get(first, str(first)) if first else None,
                                "sport": sock.getsockname()[1]})
            finally:
                sock.close()
    report(results=results)


def _wait_acked(conn: socket.socket, deadline: float) -> None:
    """Wait until every byte sent on ``conn`` is acknowledged (``TIOCOUTQ``: unsent plus unacked bytes)."""
    while struct.unpack("i", fcntl.ioctl(conn.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]:
        if time.monotonic() > deadline:
            raise TimeoutError("request not acknowledged within 10 s")
        time.sleep(0.0002)


def churn(args: argparse.Namespace) -> None:
    """Serve in a child process, and from this one make --count short connections to it: each sends
    --send bytes, half-closes and reads the --send-byte reply to EOF. Report both pids and the port."""
    ready, told = os.pipe()
    server = os.fork()
    if server == 0:  # the server listens itself: accepted sockets inherit the listener's owner
        listener = socket.socket(_family(args.host), socket.SOCK_STREAM)
        listener.bind((args.host, 0))
        listener.listen(1024)
        os.write(told, listener.getsockname()[1].to_bytes(2, "little"))
        while True:
            conn, _ = listener.accept()
            with conn:
                while conn.recv(65536):
                    pass
                conn.sendall(b"r" * args.send)
    port = int.from_bytes(os.read(ready, 2), "little")
    for _ in range(args.count):
        with socket.create_connection((args.host, port), timeout=10) as conn:
            conn.sendall(b"s" * args.send)
            # Half-close only once the request is acknowledged, so that the server's ACK always
            # reaches this socket in ESTABLISHED (one tcp_probe sample), never in FIN_WAIT1 (none):
            # under load loopback softirqs run late and shutdown() would otherwise win the race.
            _wait_acked(conn, deadline=time.monotonic() + 10)
            conn.shutdown(socket.SHUT_WR)
            while conn.recv(65536):
                pass
    os.kill(server, 9)
    os.waitpid(server, 0)
    report(server_pid=server, port=port, count=args.count)


REQUIRED = object()
"""Marks an option the sub-command cannot do without."""

# sub-command: (function, {option: (type, default or REQUIRED)}); every one also takes --host.
COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], None], dict[str, tuple[type, object]]]] = {
    "serve": (serve, {"port": (int, 0), "reply": (int, 0), "hold": (float, 0)}),
    "reply-after-go": (
        reply_after_go,
        {"request": (int, 100), "reply": (int, 2000), "go-file": (str, REQUIRED), "linger": (float, 1.5)},
    ),
    "request-and-wait": (request_and_wait, {"port": (int, REQUIRED), "send": (int, 100), "linger": (float, 3)}),
    "client": (client, {"port": (int, REQUIRED), "send": (int, 0)}),
    "connect": (connect, {"port": (int, REQUIRED), "count": (int, 1), "timeout": (float, 30)}),
    "lossy-sender": (
        lossy_sender,
        {"port": (int, REQUIRED), "send": (int, 1000), "go-file": (str, REQUIRED), "linger": (float, 1.5)},
    ),
    "preopen-client": (
        preopen_client,
        {"port": (int, REQUIRED), "before": (int, 1000), "after": (int, 2000), "go-file": (str, REQUIRED)},
    ),
    "heal-client": (
        heal_client,
        {"port": (int, REQUIRED), "send": (int, 3000), "go-file": (str, REQUIRED), "heal-file": (str, REQUIRED)},
    ),
    "close-unread-server": (close_unread_server, {"request": (int, 100)}),
    "send-until-reset": (send_until_reset, {"port": (int, REQUIRED), "send": (int, 1000)}),
    "simultaneous-open": (simultaneous_open, {"go-file": (str, REQUIRED)}),
    "stale-owner": (stale_owner, {"go-file": (str, REQUIRED), "linger": (float, 1.5)}),
    "bulk-sender": (bulk_sender, {"port": (int, REQUIRED), "seconds": (float, 5)}),
    "churn": (churn, {"count": (int, 100), "send": (int, 100)}),
    "connect-modes": (
        connect_modes,
        {"port": (int, REQUIRED), "modes": (str, "blocking"), "count": (int, 1), "timeout": (float, 10),
         "go-file": (str, "")},
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (func, options) in COMMANDS.items():
        command = sub.add_parser(name)
        command.add_argument("--host", default="127.0.0.1")
        for option, (kind, default) in options.items():
            if default is REQUIRED:
                command.add_argument(f"--{option}", type=kind, required=True)
            else:
                command.add_argument(f"--{option}", type=kind, default=default)
        command.set_defaults(func=func)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    sys.exit(main())
