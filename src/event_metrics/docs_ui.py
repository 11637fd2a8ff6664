"""The schema pages (Swagger UI, ReDoc, RapiDoc), with their scripts served by the service.

Litestar's defaults load each page's JavaScript, CSS, fonts and favicon from CDNs, so
offline the pages stay blank; here every asset comes from the `openapi-ui-bundles`
package, under /schema/static/<ui>/. Stoplight Elements is not offered: it would mean
keeping its 2 MB bundle in this repository and updating it by hand.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from litestar import Request, Router, get
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.plugins import (
    OpenAPIRenderPlugin,
    RapidocRenderPlugin,
    RedocRenderPlugin,
    SwaggerRenderPlugin,
    YamlRenderPlugin,
)
from litestar.static_files import create_static_files_router
from openapi_ui_bundles import rapidoc, redoc, swagger_ui

SCHEMA_PATH = "/schema"
ASSETS_PATH = f"{SCHEMA_PATH}/static"
BUNDLES: dict[str, Path] = {
    "swagger": swagger_ui.static_path,
    "redoc": redoc.static_path,
    "rapidoc": rapidoc.static_path,
}
# Litestar's default favicon is its badge on a CDN; an empty data URL also keeps the
# browser from asking for /favicon.ico.
NO_FAVICON = "<link rel='icon' href='data:,'>"
# ReDoc's sidebar shows its logo from Redocly's CDN, with no option to turn that off
# (Redocly/redoc#2108); the package ships the same logo.
REDOC_CDN_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"
REDOC_LOGO = f"{ASSETS_PATH}/redoc/logo-mini.svg".encode()


class OfflineRapidocPlugin(RapidocRenderPlugin):
    """RapiDoc, without the Google fonts it loads unless its element says not to."""

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        page = super().render(request, openapi_schema)
        return page.replace(b"<rapi-doc ", b'<rapi-doc load-fonts="false" ', 1)


def render_plugins() -> list[OpenAPIRenderPlugin]:
    """The pages under /schema; the first, ReDoc, is also served at /schema itself."""
    return [
        RedocRenderPlugin(
            js_url=f"{ASSETS_PATH}/redoc.standalone.js",
            google_fonts=False,
            favicon=NO_FAVICON,
        ),
        SwaggerRenderPlugin(
            js_url=f"{ASSETS_PATH}/swagger/swagger-ui-bundle.js",
            css_url=f"{ASSETS_PATH}/swagger/swagger-ui.css",
            standalone_preset_js_url=f"{ASSETS_PATH}/swagger/swagger-ui-standalone-preset.js",
            favicon=NO_FAVICON,
        ),
        OfflineRapidocPlugin(js_url=f"{ASSETS_PATH}/rapidoc/rapidoc-min.js", favicon=NO_FAVICON),
        # Given any plugins, Litestar adds openapi.json by itself but not the YAML.
        YamlRenderPlugin(),
    ]


@functools.cache
def _redoc_bundle() -> bytes:
    bundle = (redoc.static_path / "redoc.standalone.js").read_bytes()
    return bundle.replace(REDOC_CDN_LOGO, REDOC_LOGO)


@get(
    f"{ASSETS_PATH}/redoc.standalone.js",
    media_type="text/javascript",
    include_in_schema=False,
    sync_to_thread=False,
)
def redoc_bundle() -> bytes:
    """ReDoc's script, showing the logo from the service instead of the CDN."""
    return _redoc_bundle()


def asset_routes() -> list[Router | HTTPRouteHandler]:
    """A static files router per UI, over its directory in the installed package; ReDoc's
    script apart."""
    routers = [
        create_static_files_router(
            path=f"{ASSETS_PATH}/{ui}",
            directories=[directory],
            name=f"docs-assets-{ui}",
            include_in_schema=False,
        )
        for ui, directory in BUNDLES.items()
    ]
    return [*routers, redoc_bundle]
