"""Record what the Python SDKs really send: analytics-python (Segment), rudder-sdk-python
and posthog-python, each pointed at a local capture server, write tests/fixtures/sdk/.

    python -m bench.capture_sdks [--out tests/fixtures/sdk]

Each SDK makes the same calls (tracks with properties, then one identify), flushes, and
every request it sends is stored in the fixtures' format (tests/fixtures/sdk/README.md):
path, query, the headers that matter, the exact body bytes, and what they decode to. The
load tools (bench.load -protocol, bench/wrk/sdk_batch.lua) build their batches from these
messages, so they send what the SDKs send.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import importlib.metadata
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

OUT = Path(__file__).parents[1] / "tests" / "fixtures" / "sdk"
SEGMENT_KEY = "wk_server_test"
POSTHOG_KEY = "phc_server_test_token"
KEPT_HEADERS = ("Content-Type", "Content-Encoding", "Authorization")
TRACKS = 3  # per SDK: enough to show which fields repeat on every message


class Capture(BaseHTTPRequestHandler):
    requests: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        path, _, query = self.path.partition("?")
        headers = {name: self.headers[name] for name in KEPT_HEADERS if name in self.headers}
        Capture.requests.append({"path": path, "query": query, "headers": headers, "body": body})
        answer = b'{"success": true, "status": 1}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *_: Any) -> None:
        pass


def segment(url: str) -> None:
    from segment.analytics import Client

    client = Client(SEGMENT_KEY, host=url, max_retries=0)
    for n in range(TRACKS):
        client.track("user-42", "Product Viewed", {"product_id": f"p-{n}", "price": 19.99})
    client.identify("user-42", {"email": "user42@example.com", "plan": "pro"})
    client.flush()
    client.join()


def rudder(url: str) -> None:
    from rudderstack.analytics import Client

    client = Client(SEGMENT_KEY, host=url, max_retries=0)
    for n in range(TRACKS):
        client.track("user-42", "Product Viewed", {"product_id": f"p-{n}", "price": 19.99})
    client.identify("user-42", {"email": "user42@example.com", "plan": "pro"})
    client.flush()
    client.join()


def posthog(url: str) -> None:
    from posthog import Posthog

    client = Posthog(POSTHOG_KEY, host=url, max_retries=0)
    for n in range(TRACKS):
        client.capture(
            "Product Viewed", distinct_id="user-42",
            properties={"product_id": f"p-{n}", "price": 19.99},
        )  # fmt: skip
    client.set(distinct_id="user-42", properties={"email": "user42@example.com", "plan": "pro"})
    client.flush()
    client.shutdown()


SDKS: dict[str, tuple[str, Callable[[str], None]]] = {
    "analytics-python": ("segment-analytics-python", segment),
    "rudder-sdk-python": ("rudder-sdk-python", rudder),
    "posthog-python": ("posthog", posthog),
}


def record(name: str, out: Path) -> list[Path]:
    package, send = SDKS[name]
    server = ThreadingHTTPServer(("127.0.0.1", 0), Capture)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Capture.requests = []
    try:
        send(f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
    written = []
    for n, request in enumerate(Capture.requests):
        body: bytes = request["body"]
        steps = []
        text = body
        if body[:2] == b"\x1f\x8b":
            text = gzip.decompress(body)
            steps.append("gunzip")
        fixture = {
            "sdk": name,
            "sdk_version": importlib.metadata.version(package),
            "scenario": "batch",
            "method": "POST",
            "path": request["path"],
            "query": request["query"],
            "headers": request["headers"],
            "body_b64": base64.b64encode(body).decode(),
            "decoded_json": json.loads(text),
            "decode_steps": steps,
            "note": f"Recorded by bench/capture_sdks.py from {package} on Python, sending "
            "to a local capture server.",
        }
        path = out / f"{name}__batch__{n:02d}.json"
        path.write_text(json.dumps(fixture, indent=1, ensure_ascii=False) + "\n")
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--sdk", choices=sorted(SDKS), action="append")
    args = parser.parse_args()
    for name in args.sdk or sorted(SDKS):
        for path in record(name, args.out):
            print(path)


if __name__ == "__main__":
    main()
