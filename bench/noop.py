"""A no-op Litestar app with the event-metrics HTTP surface, as a benchmark baseline.

    python -m bench.noop --port 8091 [--workers N]

It measures the load tool's own ceiling and what Litestar + uvicorn cost before the real
service does any work. It stores nothing, so /metrics reports `events: null`, which
bench.load treats as "cannot verify" rather than as a failure.
"""

from __future__ import annotations

import argparse
from typing import Any

import uvicorn
from litestar import Litestar, Request, get, post

# Fixed answers: the point is to measure the framework, not to build responses.
ACK: dict[str, Any] = {"accepted": 1, "duplicates": 0, "rejected": 0, "results": []}
HEALTH: dict[str, Any] = {"status": "ok", "backend": "noop"}


@post("/events", status_code=200)
async def ingest(request: Request[Any, Any, Any]) -> dict[str, Any]:
    await request.body()  # read it, as the real service must, but do not parse it
    return ACK


@get("/metrics")
async def metrics() -> dict[str, Any]:
    return {"total": {"events": None, "unique_users": None}, "series": [], "backend": "noop"}


@get("/health")
async def health() -> dict[str, Any]:
    return HEALTH


def create_app() -> Litestar:
    # No OpenAPI: schema generation would only add startup time to a fixture.
    return Litestar(route_handlers=[ingest, metrics, health], openapi_config=None)


app = create_app()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.noop", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8091)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    # Several workers need an import string; __spec__ is None when run as a script path.
    target = f"{__spec__.name if __spec__ else 'noop'}:app"
    uvicorn.run(
        target if args.workers > 1 else app,
        host=args.host,
        port=args.port,
        workers=args.workers,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
