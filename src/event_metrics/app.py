"""The Litestar application: routes, lifespan, and the one table of error statuses."""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from litestar import Litestar, Request, Response
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components

from event_metrics import (
    __version__,
    cors,
    dashboard,
    docs_ui,
    edge,
    event_names,
    http_fast,
    logs,
    telemetry,
)
from event_metrics.auth import InvalidCredentials, MissingCredentials, WrongScope
from event_metrics.errors import SDK_ERROR_FIELDS, ErrorBody
from event_metrics.export import ExportBusy
from event_metrics.export_route import export_events
from event_metrics.ingest import RateLimited
from event_metrics.metrics import AnswerTooLarge, BackendUnavailable, InvalidParameter
from event_metrics.metrics_service import MetricsBusy
from event_metrics.openapi import SECURITY_SCHEMES
from event_metrics.payload import (
    ClientDisconnected,
    MalformedPayload,
    PayloadTooLarge,
    TooManyEvents,
    UnsupportedMediaType,
)
from event_metrics.queue import QueueClosed, QueueFull
from event_metrics.routes import (
    INGEST_PATHS,
    READ_PATHS,
    health,
    metrics,
    posthog_ingest,
    segment_ingest,
    telemetry_exposition,
)
from event_metrics.services import Services, run_services
from event_metrics.settings import Settings
from event_metrics.writer import StorageRejected, StorageUnavailable

log = logging.getLogger(__name__)


RETRY = "retry"  # add Retry-After: RETRY_AFTER_SECONDS, or the exception's own
CHALLENGE = "challenge"  # add WWW-Authenticate
# Domain error -> (HTTP status, error code, what to add).
ERROR_STATUSES: dict[type[Exception], tuple[int, str, str | None]] = {
    MalformedPayload: (400, "malformed_body", None),
    ClientDisconnected: (400, "client_disconnected", None),
    InvalidParameter: (400, "invalid_parameter", None),
    AnswerTooLarge: (400, "answer_too_large", None),
    MissingCredentials: (401, "missing_credentials", CHALLENGE),
    InvalidCredentials: (401, "invalid_credentials", CHALLENGE),
    WrongScope: (403, "wrong_scope", None),
    PayloadTooLarge: (413, "body_too_large", None),
    TooManyEvents: (413, "too_many_events", None),
    UnsupportedMediaType: (415, "unsupported_media_type", None),
    RateLimited: (429, "rate_limited", RETRY),
    StorageRejected: (500, "storage_rejected", None),
    QueueFull: (503, "overloaded", RETRY),
    QueueClosed: (503, "shutting_down", RETRY),
    StorageUnavailable: (503, "storage_unavailable", RETRY),
    BackendUnavailable: (503, "backend_unavailable", RETRY),
    MetricsBusy: (503, "metrics_busy", RETRY),
    ExportBusy: (503, "export_busy", RETRY),
}
WWW_AUTHENTICATE = 'Bearer realm="event-metrics", Basic realm="event-metrics"'


def _error_handler(
    settings: Settings, status: int, code: str, adds: str | None
) -> Callable[[Request[Any, Any, Any], Exception], Response[ErrorBody]]:
    def handle(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
        parameter = getattr(exc, "parameter", None)
        headers = None
        if adds == RETRY:
            retry_after = getattr(exc, "retry_after_s", settings.http.retry_after_s)
            headers = {"Retry-After": str(retry_after)}
        elif adds == CHALLENGE:
            headers = {"WWW-Authenticate": WWW_AUTHENTICATE}
        if status == 500:
            body = _logged_failure(code, exc)
        else:
            body = ErrorBody(error=code, detail=str(exc), parameter=parameter)
        if _route_option(request, SDK_ERROR_FIELDS):
            body.code, body.message = code, body.detail
        return Response(body, status_code=status, headers=headers)

    return handle


def _route_option(request: Request[Any, Any, Any], name: str) -> Any:
    """An option the matched route declares (Litestar's `opt`); None without a route."""
    handler = request.scope.get("route_handler")
    return None if handler is None else handler.opt.get(name)


def _validation_handler(_: Request[Any, Any, Any], exc: ValidationException) -> Response[ErrorBody]:
    # Litestar's own checks of declared parameters: same shape as ours.
    parameter = None
    detail = exc.detail
    if isinstance(exc.extra, list) and exc.extra and isinstance(exc.extra[0], dict):
        parameter = exc.extra[0].get("key")
        detail = f"{parameter}: {exc.extra[0].get('message', detail)}"
    return Response(
        ErrorBody(error="invalid_parameter", detail=detail, parameter=parameter),
        status_code=400,
    )


def _logged_failure(code: str, exc: Exception) -> ErrorBody:
    """The body of a 500 (a bug, not a client error): the log gets the error under the
    request's id, the client only the id to quote (an error's text may hold internals, such
    as PostgreSQL's message and the values it names, or echo the request)."""
    request_id = logs.request_id.get()
    if code == "internal_error":
        log.error("unhandled error in request %s", request_id, exc_info=exc)
        what = "an unexpected error occurred"
    else:
        log.error("request %s failed (%s): %s", request_id, code, exc)
        what = "the events were refused by the database and not stored"
    detail = f"{what}; it was logged under request id {request_id}"
    return ErrorBody(error=code, detail=detail, request_id=request_id)


def _unexpected_handler(_: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    return Response(_logged_failure("internal_error", exc), status_code=500)


def _http_handler(_: Request[Any, Any, Any], exc: HTTPException) -> Response[ErrorBody]:
    code = "not_found" if exc.status_code == 404 else "http_error"
    return Response(
        ErrorBody(error=code, detail=exc.detail),
        status_code=exc.status_code,
        headers=exc.headers,
    )


@contextlib.contextmanager
def _startup_objects_frozen() -> Iterator[None]:
    """Keep the cyclic garbage collector off the request path while the app runs.

    Nothing the service builds per request is cyclic, yet a 15,000-row /metrics answer
    allocates enough objects to trigger dozens of collections, and each full one walked
    every module, route and pool object: 10-60 ms, half of such a request. Freezing what
    startup allocated takes those out of every later walk, and a larger first threshold
    makes collections rarer. Cycles made later are still collected; on shutdown the
    frozen objects become collectable again (tests start many apps in one process).
    """
    thresholds = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def _services(state: State) -> Services:
    services: Services = state.services
    return services


def create_app(settings: Settings) -> Litestar:
    """Build the app; pools, writers and the replicator start in its lifespan."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with run_services(settings) as services:
            app.state.services = services
            with _startup_objects_frozen():
                yield
        telemetry.process_exited()

    handlers: dict[Any, Any] = {
        error: _error_handler(settings, *spec) for error, spec in ERROR_STATUSES.items()
    }
    handlers[ValidationException] = _validation_handler
    handlers[HTTPException] = _http_handler
    handlers[Exception] = _unexpected_handler
    app = Litestar(
        route_handlers=[
            http_fast.ingest,
            segment_ingest,
            posthog_ingest,
            metrics,
            export_events,
            health,
            *([telemetry_exposition] if settings.telemetry.enabled else []),
            *docs_ui.asset_routes(),
            event_names.event_names,
            *dashboard.routes(settings),
        ],
        # Handlers receive the running services (which the lifespan put in app.state) as
        # their one dependency: Litestar resolves two or more in an anyio task group per
        # request, which cost a fifth of single-event throughput. (POST /events, a plain
        # ASGI handler, takes none: http_fast.py reads app.state itself.)
        dependencies={"services": Provide(_services, sync_to_thread=False)},
        lifespan=[lifespan],
        exception_handlers=handlers,
        openapi_config=OpenAPIConfig(
            title="event-metrics",
            version=__version__,
            components=Components(security_schemes=SECURITY_SCHEMES),
            path=docs_ui.SCHEMA_PATH,
            render_plugins=docs_ui.render_plugins(),
        ),
        request_max_body_size=settings.ingest.max_body_bytes,
        # Logging is configured once by the process (cli.py), not by each app.
        logging_config=None,
    )
    http_fast.describe(app)  # Litestar leaves ASGI routes out of the document
    policy = cors.CorsPolicy(
        ingest_paths=INGEST_PATHS,
        ingest_origins=settings.access.cors_ingest_origins,
        read_paths=(*READ_PATHS, event_names.PATH),
        read_origins=settings.access.cors_read_origins,
    )
    # Outermost, so that 404s, preflights and the exception handlers' answers carry the
    # request id and CORS headers too.
    routes = (*INGEST_PATHS, *READ_PATHS, event_names.PATH, "/health", telemetry.PATH)
    app.asgi_handler = edge.middleware(app.asgi_handler, policy, routes, access=settings.access_log)
    return app


def app_from_env() -> Litestar:
    """Factory for `uvicorn --factory`: settings from the environment (worker processes
    configure their logging here too)."""
    settings = Settings.from_env()
    logs.configure(
        json_lines=settings.log_format == "json",
        level=settings.log_level,
        access_log=settings.access_log,
    )
    return create_app(settings)
