"""TCP states by their kernel names, numbered as in include/net/tcp_states.h."""

from __future__ import annotations

TCP_STATES: dict[int, str] = {
    1: "ESTABLISHED",
    2: "SYN_SENT",
    3: "SYN_RECV",
    4: "FIN_WAIT1",
    5: "FIN_WAIT2",
    6: "TIME_WAIT",
    7: "CLOSE",
    8: "CLOSE_WAIT",
    9: "LAST_ACK",
    10: "LISTEN",
    11: "CLOSING",
    12: "NEW_SYN_RECV",
}


def tcp_state_name(number: int) -> str:
    """The kernel name of a TCP state number (``7`` → ``"CLOSE"``)."""
    name = TCP_STATES.get(number)
    return f"UNKNOWN_{number}" if name is None else name  # the f-string only when it is needed
