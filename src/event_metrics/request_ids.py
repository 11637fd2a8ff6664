"""A request id for every HTTP request: taken from a sane incoming X-Request-Id or made
up (edge.py echoes it in the response, and sets it in logs.request_id for every log line
written while the request runs)."""

from __future__ import annotations

import itertools
import os
import re

# Made-up ids: a random per-process prefix and a counter, unique without the 3 us of a
# uuid4 on every request.
_PREFIX = os.urandom(4).hex()
_counter = itertools.count(1)

HEADER = b"x-request-id"
# A client's own id is kept only when it is short and plain, so it cannot forge log lines.
_SANE = re.compile(rb"[A-Za-z0-9._:-]{1,64}")


def assign(incoming: bytes | None) -> str:
    """The request's id: the client's own when it is plain, else a new one."""
    if incoming is not None and _SANE.fullmatch(incoming):
        return incoming.decode("ascii")
    return f"{_PREFIX}{next(_counter):012x}"
