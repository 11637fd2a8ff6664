"""The dashboard's files: all of them ship in the wheel, the page names only files that
exist, nothing points at another host, and the committed uPlot is the one the vendoring
script pins. No server: the browser tests (integration/test_dashboard*.py) do the rest."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

from event_metrics import dashboard
from event_metrics.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "event_metrics"
FILES = sorted(p for p in dashboard.STATIC.rglob("*") if p.is_file())


def test_every_dashboard_file_is_package_data() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = config["tool"]["setuptools"]["package-data"]["event_metrics"]
    assert FILES
    for path in FILES:
        name = path.relative_to(PACKAGE).as_posix()
        # setuptools' globs: '*' does not cross a '/'.
        matched = [
            p for p in patterns if fnmatch.fnmatch(name, p) and p.count("/") == name.count("/")
        ]
        assert matched, f"{name} would be left out of the wheel"


def test_the_page_names_only_files_that_exist_and_modules_import_only_their_siblings() -> None:
    page = dashboard.render_page(Settings.build()).decode()
    assert "{{" not in page
    named = re.findall(r'(?:href|src)="([^"]+)"', page)
    assets = [n for n in named if n.startswith(dashboard.ASSETS_PATH)]
    assert {n for n in named if not n.startswith(("data:", "#"))} == set(assets)
    for url in assets:
        assert (
            dashboard.STATIC / "assets" / url.removeprefix(dashboard.ASSETS_PATH + "/")
        ).is_file()
    for script in (dashboard.STATIC / "assets").glob("*.js"):
        for module in re.findall(r'from "(\./[^"]+)"', script.read_text(encoding="utf-8")):
            assert (script.parent / module).is_file(), f"{script.name} imports {module}"


def test_nothing_loads_from_another_host() -> None:
    for path in FILES:
        if path.suffix not in (".js", ".css", ".html"):
            continue
        text = path.read_text(encoding="utf-8")
        # Links for people (a licence header, the docs) are not loads; anything else is.
        urls = set(re.findall(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}[^\s\"')]*", text))
        urls = {u for u in urls if "github.com/leeoniya/uPlot" not in u}
        assert not urls, f"{path.name} names other hosts: {urls}"


def test_the_committed_uplot_is_the_pinned_version_with_its_licence() -> None:
    script = (ROOT / "scripts" / "vendor_uplot.sh").read_text(encoding="utf-8")
    version = re.search(r"^VERSION=(\S+)$", script, re.MULTILINE)
    assert version
    vendor = dashboard.STATIC / "assets" / "vendor"
    header = (vendor / "uPlot.iife.min.js").read_text(encoding="utf-8").splitlines()[0]
    assert f"(v{version.group(1)})" in header
    assert "MIT License" in (vendor / "uPlot.LICENSE").read_text(encoding="utf-8")


def test_the_page_offers_a_backend_only_when_clickhouse_is_configured() -> None:
    alone = dashboard.render_page(Settings.build()).decode()
    both = dashboard.render_page(Settings.build(clickhouse_url="clickhouse://x/db")).decode()
    assert 'data-backends="postgres"' in alone
    assert 'data-backends="postgres clickhouse"' in both
