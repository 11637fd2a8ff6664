"""Render bench.queries results: a markdown table and a grouped bar chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# The reference Go service's README (20M rows, Apple M4, 24 GB): PostgreSQL / ClickHouse
# execution times in ms, None where it gave no figure. Shown for context only: other
# machine, other data.
REFERENCE_MS: dict[str, tuple[float | None, float | None]] = {
    "q1-1d": (466, None),
    "q1-7d": (1960, None),
    "q1-30d": (7770, 180),
    "q2-7d": (1980, 140),
    "q2-30d": (None, 340),
    "q3-1d": (493, None),
    "q3-7d": (2020, 130),
    "q3-30d": (None, 50),
}


def _ms(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def _cell(path: dict[str, Any]) -> str:
    if path["error"]:
        return "error"
    return f"{_ms(path['median_ms'])} ({_ms(path['p95_ms'])})"


def _speedup(baseline: dict[str, Any], path: dict[str, Any]) -> str:
    if not baseline["median_ms"] or not path["median_ms"]:
        return "–"
    return f"{baseline['median_ms'] / path['median_ms']:.1f}×"


def render_markdown(result: dict[str, Any]) -> str:
    """Rows = query×window; per path median (p95) ms, then each path's speed-up."""
    paths: list[str] = result["paths"]
    baseline = result["baseline"]
    others = [p for p in paths if p != baseline]
    head = ["id", "description", *(f"{p} ms" for p in paths), *(f"{p} ×" for p in others)]
    head.append("reference PG / CH ms")
    lines = [
        "# Query benchmark",
        "",
        f"{result['events_rows']:,} rows in `events`; windows end at {result['end']}; "
        f"{result['runs']} runs per cell, the first discarded as warm-up. Cells: median (p95) "
        f"in ms; `×` = speed-up over `{baseline}` (the plain SQL scan the reference "
        "describes). HTTP paths are end to end through `/metrics`, which runs the series "
        "and the window total as two queries.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    mismatches = []
    for cell in result["cells"]:
        name = f"{cell['query']}-{cell['days']}d"
        by_path = cell["paths"]
        reference = REFERENCE_MS.get(name, (None, None))
        row = [name, cell["description"], *(_cell(by_path[p]) for p in paths)]
        row += [_speedup(by_path[baseline], by_path[p]) for p in others]
        row.append(f"{_ms(reference[0])} / {_ms(reference[1])}")
        lines.append("| " + " | ".join(row) + " |")
        mismatches += [f"- {name}: {m}" for m in cell["mismatches"]]
        mismatches += [
            f"- {name}: {p} failed: {by_path[p]['error']}" for p in paths if by_path[p]["error"]
        ]
    lines += ["", "Reference figures: the earlier Go service's README (Apple M4, 24 GB, 20M rows)."]
    lines += ["", "## Consistency", ""]
    lines += mismatches or [
        "The HTTP backends returned identical JSON (apart from `backend`) for every query, "
        "and every path counted the same number of events."
    ]
    return "\n".join(lines) + "\n"


def render_chart(result: dict[str, Any], target: Path) -> None:
    """Grouped bars (median, p95 as a whisker) per query×window, log-scale ms."""
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot
    import matplotlib.pyplot as plt

    paths: list[str] = result["paths"]
    cells = result["cells"]
    labels = [f"{c['query']}-{c['days']}d" for c in cells]
    width = 0.8 / len(paths)
    fig, ax = plt.subplots(figsize=(max(8, len(cells) * 0.9), 5))
    for i, path in enumerate(paths):
        xs, medians, whiskers = [], [], []
        for x, cell in enumerate(cells):
            entry = cell["paths"][path]
            if entry["median_ms"]:
                xs.append(x - 0.4 + width * (i + 0.5))
                medians.append(entry["median_ms"])
                whiskers.append(max(0.0, entry["p95_ms"] - entry["median_ms"]))
        ax.bar(xs, medians, width, label=path, yerr=[[0] * len(xs), whiskers], capsize=2)
    ax.set_yscale("log")
    ax.set_xticks(range(len(cells)), labels, rotation=45, ha="right")
    ax.set_ylabel("ms (median; whisker = p95)")
    ax.set_title(f"/metrics query classes, {result['events_rows']:,} events")
    ax.legend()
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(target, dpi=120)
    plt.close(fig)
