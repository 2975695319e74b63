"""The otlp emitter: batches of events POSTed as OTLP/HTTP protobuf on jalki's delivery core."""

from __future__ import annotations

import gzip
import logging

import httpx
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse

from jalki_core.emitters.delivery import DeliveryEmitter, classify_http_status, parse_retry_after
from jalki_core.errors import RejectedSendError, RetryableSendError
from jalki_core.events import Event
from jalki_core.version import __version__ as JALKI_VERSION
from jalki_otlp.config import OtlpConfig
from jalki_otlp.encode import export_request

log = logging.getLogger("jalki.emitters.otlp")


class OtlpEmitter(DeliveryEmitter):
    """Sends events as OpenTelemetry log records to an OTLP/HTTP receiver (``/v1/logs``).

    A timeout after the request went out is retried like a connection error,
    so a receiver that took a batch but answered late may get it twice
    (at-least-once, as every OTLP exporter).
    """

    name = "otlp"

    def __init__(self, config: OtlpConfig) -> None:
        super().__init__(config.settings)
        self.config = config
        self._client: httpx.Client | None = None
        self._headers = {"Content-Type": "application/x-protobuf", "User-Agent": f"jalki/{JALKI_VERSION}",
                         **config.headers}
        if config.gzip:
            self._headers["Content-Encoding"] = "gzip"

    def open(self) -> None:
        # No connection now: a receiver that is down at start costs retries and counted losses, not the run.
        self._client = httpx.Client(timeout=self.config.timeout_s, headers=self._headers)

    def send(self, events: list[Event], time_left: float | None) -> int:
        """POST one ExportLogsServiceRequest; return the records the receiver said it rejected."""
        if self._client is None:
            self.open()
        assert self._client is not None
        body = export_request(events).SerializeToString()
        if self.config.gzip:
            body = gzip.compress(body, compresslevel=5)
        timeout = self.config.timeout_s if time_left is None else max(0.001, min(self.config.timeout_s, time_left))
        try:
            reply = self._client.post(self.config.url, content=body, timeout=timeout)
        except httpx.TransportError as exc:  # refused, reset, timed out: worth another try
            raise RetryableSendError(f"{type(exc).__name__}: {exc}") from exc
        verdict = classify_http_status(reply.status_code)
        if verdict == "retry":
            raise RetryableSendError(f"HTTP {reply.status_code} from {self.config.url}",
                                     retry_after=parse_retry_after(reply.headers.get("Retry-After")))
        if verdict == "reject":
            raise RejectedSendError(f"HTTP {reply.status_code} from {self.config.url}: {_status_text(reply)}")
        return _rejected(reply)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _rejected(reply: httpx.Response) -> int:
    """``partial_success.rejected_log_records`` of a 2xx reply (0 for an empty or non-protobuf body)."""
    if not reply.content or "protobuf" not in reply.headers.get("Content-Type", "application/x-protobuf"):
        return 0
    response = ExportLogsServiceResponse()
    try:
        response.ParseFromString(reply.content)
    except DecodeError:
        return 0
    rejected = int(response.partial_success.rejected_log_records)
    if rejected or response.partial_success.error_message:
        log.warning("otlp receiver rejected %d records: %s", rejected, response.partial_success.error_message)
    return rejected


def _status_text(reply: httpx.Response) -> str:
    """The reason an OTLP receiver gave (a google.rpc.Status message, or text), on one short line."""
    text = reply.text if "protobuf" not in reply.headers.get("Content-Type", "") else ""
    if not text:
        try:
            from google.rpc import status_pb2

            status = status_pb2.Status()
            status.ParseFromString(reply.content)
            text = status.message
        except Exception:  # no googleapis protos, or not a Status: the code says enough
            text = ""
    return " ".join(text.split())[:200] or reply.reason_phrase
