"""Batches shaped exactly like each SDK's, from its recorded requests (tests/fixtures/sdk):
the SDK's own envelope, headers, JSON spacing and compression, and messages copied from
its first recorded message with what the SDK makes fresh for each call (the message id,
the timestamp) and the load tool's own (event name, user, a sequence number).

    python -m bench.sdk_shapes --sdk analytics-python --batch 100 --count 3000 --out FILE

writes FILE of request bodies for bench/wrk/sdk_batch.lua (see write_bodies), with FILE.lua
holding the path and headers; --sdk native writes the same events as POST /events batches.
"""

from __future__ import annotations

import argparse
import base64
import copy
import gzip
import json
import struct
import urllib.parse
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parents[1] / "tests" / "fixtures" / "sdk"
ID_NAMESPACE = uuid.UUID("9b3f7c1e-2a4d-4e8f-9c6b-5d2e1f0a3b7c")


@dataclass(frozen=True)
class Shape:
    """How one SDK sends a batch."""

    fixture: str
    id_field: str  # the message's idempotency key
    user_field: str
    compact: bool  # JSON without spaces (JavaScript's JSON.stringify), else Python's json.dumps
    encoding: str  # "json"; "gzip"; "base64-form": data=<base64>, form-encoded (posthog-js)
    key_in_body: str | None  # the envelope field holding the key, if the SDK puts it there
    basic_auth: bool  # the key as the Basic user name

    def template(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The recorded request and its first message."""
        recorded: dict[str, Any] = json.loads((FIXTURES / self.fixture).read_text())
        body = recorded["decoded_json"]
        return recorded, body["batch"][0]


SHAPES = {
    "analytics-python": Shape("analytics-python__batch__00.json", "messageId", "userId",
                              compact=False, encoding="json", key_in_body="writeKey",
                              basic_auth=True),
    "rudder-sdk-python": Shape("rudder-sdk-python__batch__00.json", "messageId", "userId",
                               compact=False, encoding="gzip", key_in_body=None,
                               basic_auth=True),
    "posthog-python": Shape("posthog-python__batch__00.json", "uuid", "distinct_id",
                            compact=False, encoding="json", key_in_body="api_key",
                            basic_auth=False),
    # posthog-js batches gzipped (without Content-Encoding) by default, and sends what is
    # left on page unload with sendBeacon, as a form whose data is base64.
    "posthog-js": Shape("posthog-js__gzip_default_batched__00.json", "uuid", "distinct_id",
                        compact=True, encoding="gzip", key_in_body="api_key", basic_auth=False),
    "posthog-js-beacon": Shape("posthog-js__beacon_unload_uncompressed__00.json", "uuid",
                               "distinct_id", compact=True, encoding="base64-form",
                               key_in_body="api_key", basic_auth=False),
}  # fmt: skip
# The -protocol names bench.load has always taken.
ALIASES = {"segment": "analytics-python", "posthog": "posthog-python"}


@dataclass(frozen=True)
class Request:
    path: str
    headers: dict[str, str]
    body: bytes


def message_id(run: str, seq: int) -> str:
    """A UUID, as the SDKs send, unique per run and sequence number."""
    return str(uuid.uuid5(ID_NAMESPACE, f"{run}-{seq}"))


def stamps(now: datetime, count: int) -> list[datetime]:
    """The times of `count` calls queued one millisecond apart up to `now`: an SDK stamps
    each call when it is made, and sends them together later."""
    return [now - timedelta(milliseconds=count - n) for n in range(count)]


def like(recorded: str, moment: datetime) -> str:
    """`moment` written as the SDK wrote `recorded`: JavaScript's toISOString (milliseconds,
    Z) or Python's isoformat (milliseconds or microseconds, +00:00)."""
    digits = len(recorded.partition(".")[2].rstrip("Z").split("+")[0]) or 6
    text = moment.isoformat(timespec="milliseconds" if digits == 3 else "microseconds")
    return text.replace("+00:00", "Z") if recorded.endswith("Z") else text


def sdk_batch(
    sdk: str, *, key: str, run: str, seqs: Sequence[int], event_name: str, users: Sequence[str]
) -> Request:
    """One batch request of len(seqs) messages, as `sdk` sends it; users[n] is the user of
    the message numbered seqs[n]."""
    shape = SHAPES[ALIASES.get(sdk, sdk)]
    recorded, template = shape.template()
    envelope = {name: value for name, value in recorded["decoded_json"].items()}
    clock = "sentAt" if "sentAt" in envelope else "sent_at"
    now = datetime.now(UTC)
    messages = []
    for seq, user, stamp in zip(seqs, users, stamps(now, len(seqs)), strict=True):
        message = copy.deepcopy(template)
        message[shape.id_field] = message_id(run, seq)
        message["event"] = event_name
        message["timestamp"] = like(template["timestamp"], stamp)
        properties = message.setdefault("properties", {})
        properties["seq"] = seq
        if shape.user_field == "distinct_id" and "distinct_id" in properties:
            properties["distinct_id"] = user  # posthog-js: there, and not at the top level
        if shape.user_field in template or "distinct_id" not in properties:
            message[shape.user_field] = user
        if "token" in properties:
            properties["token"] = key
        messages.append(message)
    envelope["batch"] = messages
    if clock in envelope:
        envelope[clock] = like(envelope[clock], now)
    if shape.key_in_body:
        envelope[shape.key_in_body] = key
    if shape.compact:
        text = json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode()
    else:
        text = json.dumps(envelope).encode()
    headers = dict(recorded["headers"])
    if shape.basic_auth:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
    body = text
    if shape.encoding == "gzip":
        body = gzip.compress(text, mtime=0)
    elif shape.encoding == "base64-form":  # encodeURIComponent(btoa(json))
        body = b"data=" + urllib.parse.quote(base64.b64encode(text), safe="").encode()
    path = recorded["path"] + (f"?{recorded['query']}" if recorded["query"] else "")
    return Request(path, headers, body)


def native_batch(
    sdk: str, *, key: str, run: str, seqs: Sequence[int], event_name: str, users: Sequence[str]
) -> Request:
    """The same events as a POST /events batch: name, user, key, time, channel and the
    user's own properties (what the SDK adds around them is what a native client omits)."""
    shape = SHAPES[ALIASES.get(sdk, sdk)]
    _, template = shape.template()
    now = datetime.now(UTC)
    own = {k: v for k, v in template.get("properties", {}).items()
           if not k.startswith("$") and k not in ("token", "distinct_id")}  # fmt: skip
    events = [
        {"event_name": event_name, "user_id": user,
         "idempotency_key": message_id(run, seq), "timestamp": like(template["timestamp"], stamp),
         "channel": "server", "properties": {**own, "seq": seq}}
        for seq, user, stamp in zip(seqs, users, stamps(now, len(seqs)), strict=True)
    ]  # fmt: skip
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    return Request("/events", headers, json.dumps(events).encode())


def write_bodies(sdk: str, *, key: str, batch: int, count: int, out: Path) -> None:
    """`count` requests of `batch` events for wrk: each body as a 4-byte big-endian length
    and the bytes; OUT.lua holds the path and headers (a Lua table)."""
    run = uuid.uuid4().hex[:8]
    users = [f"user-{u}" for u in range(1000)]
    build = native_batch if sdk.startswith("native") else sdk_batch
    shape_of = sdk.split(":", 1)[1] if sdk.startswith("native:") else sdk
    request = None
    with out.open("wb") as bodies:
        for n in range(count):
            seqs = range(n * batch, (n + 1) * batch)
            request = build(shape_of, key=key, run=run, seqs=seqs, event_name="wrk_sdk",
                            users=[users[seq % len(users)] for seq in seqs])  # fmt: skip
            bodies.write(struct.pack(">I", len(request.body)) + request.body)
    assert request is not None
    headers = ", ".join(f"[{json.dumps(k)}] = {json.dumps(v)}" for k, v in request.headers.items())
    Path(f"{out}.lua").write_text(
        f"return {{path = {json.dumps(request.path)}, headers = {{{headers}}}, batch = {batch}}}\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    choices = ", ".join(SHAPES)
    parser.add_argument("--sdk", required=True, help=f"{choices}, or native:<sdk>: the same events")
    parser.add_argument("--key", required=True)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    write_bodies(args.sdk, key=args.key, batch=args.batch, count=args.count, out=args.out)


if __name__ == "__main__":
    main()
