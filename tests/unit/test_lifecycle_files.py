"""Export and import without a server: Accept-Encoding, the export window, how a file is
cut into numbered batches, and lines that are valid POST /events bodies."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from event_metrics import event_files, export
from event_metrics.events import EventIn
from event_metrics.export_route import accepts_gzip
from event_metrics.metrics import InvalidParameter


@pytest.mark.parametrize(
    ("header", "gzip_ok"),
    [
        (None, False),
        ("gzip", True),
        ("GZIP", True),
        ("deflate, gzip;q=0.8", True),
        ("x-gzip", True),
        ("*", True),
        ("gzip;q=0", False),
        ("gzip; q=0.0", False),
        ("br, deflate", False),
        ("gzip;q=bogus", False),
    ],
)
def test_accept_encoding(header: str | None, gzip_ok: bool) -> None:
    headers = [(b"host", b"x")] + ([(b"accept-encoding", header.encode())] if header else [])
    assert accepts_gzip(headers) is gzip_ok


def test_the_window_is_half_open_and_open_where_absent() -> None:
    window = export.parse_window(project_id=3, start=None, end=None, event_name=None)
    assert (window.start, window.end) == (export.EARLIEST, export.LATEST)
    window = export.parse_window(
        project_id=3, start="2026-11-01T10:00:00.5+02:00", end="2026-11-02T00:00:00Z",
        event_name="buy",
    )  # fmt: skip
    assert window.start == datetime(2026, 11, 1, 8, 0, 0, 500000, tzinfo=UTC)
    assert window.end == datetime(2026, 11, 2, tzinfo=UTC)
    with pytest.raises(InvalidParameter) as refused:
        export.parse_window(project_id=3, start="2026-11-02T00:00:00Z",
                            end="2026-11-02T00:00:00Z", event_name=None)  # fmt: skip
    assert refused.value.parameter == "to"


def test_an_exported_line_is_a_valid_event() -> None:
    record = (1, datetime(2026, 11, 1, 9, 15, 0, 250000, tzinfo=UTC), "sha:ab", "view", "u1", "",
              '{"n": 1.50, "s": "a\\tb"}')  # fmt: skip
    line = export.encode_lines([record])
    assert line.endswith(b"\n")
    event = msgspec.json.decode(line, type=EventIn)
    assert event.timestamp == record[1]
    assert (event.idempotency_key, event.channel) == ("sha:ab", None)
    assert bytes(event.properties) == b'{"n": 1.50, "s": "a\\tb"}'  # as stored, digits too


def batches_of(tmp_path: Path, data: bytes, rows: int) -> list[event_files.Batch]:
    path = tmp_path / "f"
    path.write_bytes(data)
    return list(event_files.batches(path, batch_rows=rows))


@settings(max_examples=200, deadline=None)
@given(
    lines=st.lists(st.sampled_from([b"{}", b'{"a": 1}', b"", b"  ", b"x", b"{\r"]), max_size=30),
    rows=st.integers(1, 7),
    newline_at_end=st.booleans(),
    compressed=st.booleans(),
)
def test_lines_are_numbered_as_in_the_file(
    tmp_path_factory: pytest.TempPathFactory, lines: list[bytes], rows: int,
    newline_at_end: bool, compressed: bool,
) -> None:  # fmt: skip
    data = b"\n".join(lines) + (b"\n" if newline_at_end and lines else b"")
    if compressed:
        data = gzip.compress(data[: len(data) // 2]) + gzip.compress(data[len(data) // 2 :])
    found = batches_of(tmp_path_factory.mktemp("b"), data, rows)
    expected = [(n, line) for n, line in enumerate(lines, start=1) if line.strip()]
    assert [pair for b in found for pair in zip(b.numbers, b.lines, strict=True)] == expected
    assert all(0 < len(b.lines) <= rows for b in found)
    if found:
        assert found[-1].done == pytest.approx(1.0)


def test_a_file_that_claims_gzip_but_is_broken(tmp_path: Path) -> None:
    with pytest.raises(event_files.UnreadableFile, match="not valid gzip"):
        batches_of(tmp_path, gzip.compress(b'{"a": 1}\n' * 100)[:-20], 10)
