"""GET /dashboard: the one-page dashboard, served by the service itself, and `/` leading
to it.

The page is static HTML, CSS and JavaScript from static/dashboard/ in this package (uPlot,
the charting library, is committed there with its licence: scripts/vendor_uplot.sh
rebuilds it from the npm registry), so it works offline and `serve` needs no Node. It
reads only the public routes and those its read key opens, with the key the user pastes;
the server knows nothing of a session. docs/dashboard.md says how to use it.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from litestar import Request, Response, Router, get
from litestar.datastructures import CacheControlHeader
from litestar.handlers import HTTPRouteHandler
from litestar.response import Redirect
from litestar.static_files import create_static_files_router

from event_metrics.settings import Settings

PAGE_PATH = "/dashboard"
ASSETS_PATH = "/dashboard/static"
STATIC = Path(__file__).parent / "static" / "dashboard"
# The browser itself refuses anything from another origin, whatever a script or a style
# tries; `connect-src 'self'` keeps the key's requests on this origin.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}
# Revalidated on every load (an ETag makes that cheap): an upgraded service serves its
# new page at once.
NO_CACHE = CacheControlHeader(no_cache=True)


def render_page(settings: Settings) -> bytes:
    """The page, told which engines may answer: the backend picker shows only when
    both are configured."""
    backends = ["postgres", *(["clickhouse"] if settings.clickhouse_url else [])]
    page = (STATIC / "page.html").read_text(encoding="utf-8")
    return (
        page.replace("{{backends}}", html.escape(" ".join(backends)))
        .replace("{{default_backend}}", html.escape(settings.backend))
        .replace("{{assets}}", ASSETS_PATH)
        .encode("utf-8")
    )


def routes(settings: Settings) -> list[Router | HTTPRouteHandler]:
    """The page, the redirect from `/`, and the page's assets."""
    page = render_page(settings)

    @get(PAGE_PATH, include_in_schema=False, sync_to_thread=False, cache_control=NO_CACHE)
    def dashboard() -> Response[bytes]:
        return Response(page, media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)

    @get("/", include_in_schema=False, sync_to_thread=False)
    def root(request: Request[Any, Any, Any]) -> Redirect:
        # A shared link to the root keeps its query: the dashboard reads the same names.
        query = request.scope["query_string"].decode("latin-1")
        return Redirect(f"{PAGE_PATH}?{query}" if query else PAGE_PATH, status_code=302)

    assets = create_static_files_router(
        path=ASSETS_PATH,
        directories=[STATIC / "assets"],
        name="dashboard-assets",
        include_in_schema=False,
        cache_control=NO_CACHE,
    )
    return [dashboard, root, assets]
