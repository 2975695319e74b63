"""Traffic generator run by the kernel tests inside a network namespace.

Each sub-command prints one JSON line describing what it did (its pid, the
local port it used, the errno it met) so the test can match kernel events
against ground truth.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import socket
import sys
import time
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
        conn, _ = listener.accept()
        got = 0
        while got < args.request:
            got += len(conn.recv(args.request - got))
        go = Path(args.go_file)
        deadline = time.monotonic() + 20
        while not go.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
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
    """Connect, send --send bytes, half-close, read the reply to EOF, close."""
    with socket.create_connection((args.host, args.port), timeout=10) as conn:
        sport = conn.getsockname()[1]
        conn.sendall(b"s" * args.send)
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
    go = Path(args.go_file)
    deadline = time.monotonic() + 20
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    conn.sendall(b"x" * args.send)
    time.sleep(args.linger)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")  # RST on close
    conn.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--reply", type=int, default=0)
    p.add_argument("--hold", type=float, default=0)
    p.set_defaults(func=serve)
    p = sub.add_parser("reply-after-go")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--request", type=int, default=100)
    p.add_argument("--reply", type=int, default=2000)
    p.add_argument("--go-file", required=True)
    p.add_argument("--linger", type=float, default=1.5)
    p.set_defaults(func=reply_after_go)
    p = sub.add_parser("request-and-wait")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--send", type=int, default=100)
    p.add_argument("--linger", type=float, default=3)
    p.set_defaults(func=request_and_wait)
    p = sub.add_parser("client")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--send", type=int, default=0)
    p.set_defaults(func=client)
    p = sub.add_parser("connect")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--timeout", type=float, default=30)
    p.set_defaults(func=connect)
    p = sub.add_parser("lossy-sender")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--send", type=int, default=1000)
    p.add_argument("--go-file", required=True)
    p.add_argument("--linger", type=float, default=1.5)
    p.set_defaults(func=lossy_sender)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    sys.exit(main())
