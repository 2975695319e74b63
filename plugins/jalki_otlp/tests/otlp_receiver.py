"""An OTLP/HTTP logs receiver for the tests: decodes real ExportLogsServiceRequest protobufs and answers each
request with the next scripted reply (200, a status with Retry-After, a partial success, a slow reply)."""

from __future__ import annotations

import gzip
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord


@dataclass
class Reply:
    """One scripted answer: HTTP status, Retry-After, records to reject in a partial success, a delay."""

    status: int = 200
    retry_after: str | None = None
    reject: int = 0
    delay: float = 0.0


@dataclass
class Receiver:
    """Runs on 127.0.0.1; ``accepted`` holds each record the receiver took (answered 200 and not rejected)."""

    port: int = 0
    script: list[Reply] = field(default_factory=list)
    accepted: list[tuple[dict[str, Any], dict[str, Any], LogRecord]] = field(default_factory=list)
    requests: list[tuple[int, int]] = field(default_factory=list)
    """(status answered, records in the request) per request."""
    rejected: int = 0
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportLogsServiceRequest()
                request.ParseFromString(body)
                records = [(_attrs(resource.resource.attributes), {"scope": scope.scope.name}, record)
                           for resource in request.resource_logs for scope in resource.scope_logs
                           for record in scope.log_records]
                with receiver._lock:
                    reply = receiver.script.pop(0) if receiver.script else Reply()
                if reply.delay:
                    time.sleep(reply.delay)
                payload = b""
                with receiver._lock:
                    receiver.requests.append((reply.status, len(records)))
                    if reply.status == 200:
                        taken = records[reply.reject:]
                        receiver.accepted.extend(taken)
                        receiver.rejected += reply.reject
                        response = ExportLogsServiceResponse()
                        if reply.reject:
                            response.partial_success.rejected_log_records = reply.reject
                            response.partial_success.error_message = "scripted rejection"
                        payload = response.SerializeToString()
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/x-protobuf")
                if reply.retry_after is not None:
                    self.send_header("Retry-After", reply.retry_after)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop listening (connections are then refused) and close the socket; :meth:`start` again reuses the port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def records(self) -> list[tuple[dict[str, Any], dict[str, Any], LogRecord]]:
        with self._lock:
            return list(self.accepted)


def _attrs(pairs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in pairs:
        which = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, which) if which else None
    return out


def attributes(record: LogRecord) -> dict[str, Any]:
    """A record's attributes as a plain dict."""
    return _attrs(record.attributes)
