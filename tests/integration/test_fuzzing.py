"""Fuzzing the whole POST /events path against the real app and database (hypothesis),
and every route through the served OpenAPI schema (schemathesis). Bounded, so
`make test` stays fast."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import subprocess
import sys
import urllib.parse
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from litestar.testing import TestClient

from conftest import Keys, live_server
from event_metrics.app import create_app
from event_metrics.inflate import MAX_GZIP_MEMBERS
from event_metrics.settings import Settings
from strategies import (
    MAX_DEPTH,
    bodies,
    envelope,
    exponent_numbers,
    gzip_members,
    many_field_forms,
    written_out_digits,
)

# --- the whole path: no 5xx, and nothing half-written ------------------------------------------


@pytest.fixture
def sync_client(settings: Settings) -> Any:
    app = create_app(settings.updated(max_property_depth=MAX_DEPTH))
    with TestClient(app=app) as client:
        yield client


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=bodies(), gzipped=st.booleans())
def test_posted_bodies_never_get_5xx_and_store_exactly_what_was_accepted(
    sync_client: Any, database_url: str, keys: Keys, body: tuple[bytes, str], gzipped: bool
) -> None:
    raw, kind = body
    headers = {"Content-Type": kind, **keys.default.auth("write")}
    if gzipped:
        raw, headers["Content-Encoding"] = gzip.compress(raw), "gzip"
    before = asyncio.run(_count(database_url))
    response = sync_client.post("/events", content=raw, headers=headers)
    assert response.status_code < 500, response.text
    stored = asyncio.run(_count(database_url)) - before
    answer = response.json()
    if "accepted" in answer:
        # Derived keys can repeat earlier examples' events: those are duplicates.
        assert stored == answer["accepted"], answer
    else:
        assert stored == 0, answer


async def _count(url: str) -> int:
    connection = await asyncpg.connect(url)
    try:
        count: int = await connection.fetchval("SELECT count(*) FROM events")
        return count
    finally:
        await connection.close()


# --- every route, from the served schema ---------------------------------------------------------


@pytest.mark.parametrize(
    ("scope", "operations"),
    [
        (
            "write",
            [
                *("--exclude-path", "/metrics"),
                *("--exclude-path", "/events/names"),
                *("--exclude-path", "/export"),
            ],
        ),
        (
            "read",
            [
                *("--include-path", "/metrics"),
                *("--include-path", "/events/names"),
                *("--include-path", "/export"),
            ],
        ),
    ],
)
def test_every_route_survives_schemathesis(
    database_url: str, keys: Keys, tmp_path: Path, scope: str, operations: list[str]
) -> None:
    # Each operation with the key it needs, so the fuzzing reaches past authentication.
    key = keys.default.write if scope == "write" else keys.default.read
    with live_server(database_url) as server:
        result = subprocess.run(
            [
                str(Path(sys.executable).parent / "st"), "run",
                f"{server.url}/schema/openapi.json",
                "--header", f"Authorization: Bearer {key}",
                *operations,
                "--checks", "not_a_server_error",
                "--max-examples", "60",
                "--phases", "examples,coverage,fuzzing",
                "--generation-allow-x00", "true",
                "--seed", "20261129",
                "--workers", "1",
                "--report-dir", str(tmp_path),
                "--no-color",
            ],
            capture_output=True, text=True, timeout=600,
            env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
        )  # fmt: skip
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "passed" in result.stdout


# --- #22: keys written with escapes, big exponents, forms of many fields ---------------------

FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


async def _stored(url: str, tag: str) -> dict[str, Any]:
    """The rows whose key starts with the example's tag: key -> properties (decoded, numbers
    as Decimal, so a value compares equal however it was written)."""
    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch(
            "SELECT idempotency_key, properties::text FROM events WHERE idempotency_key LIKE $1",
            f"{tag}%",
        )
    finally:
        await connection.close()
    return {r[0]: r[1] and json.loads(r[1], parse_float=Decimal) for r in rows}


def _envelope_members(protocol: str, key: str, ids: list[str]) -> tuple[str, list[tuple[str, str]]]:
    if protocol == "native":
        events = [{"event_name": "e", "user_id": "u", "idempotency_key": i} for i in ids]
        return "/events", [("events", json.dumps(events))]
    if protocol == "segment":
        messages = [{"type": "track", "event": "e", "userId": "u", "messageId": i} for i in ids]
        return "/v1/batch", [
            ("batch", json.dumps(messages)), ("writeKey", json.dumps(key)),
            ("sentAt", '"2026-11-29T00:00:00Z"'),
        ]  # fmt: skip
    events = [{"event": "e", "distinct_id": "d", "uuid": i} for i in ids]
    return "/batch/", [
        ("batch", json.dumps(events)), ("api_key", json.dumps(key)),
        ("sent_at", '"2026-11-29T00:00:00Z"'),
    ]  # fmt: skip


@FUZZ
@given(data=st.data(), protocol=st.sampled_from(["native", "segment", "posthog"]))
def test_envelope_keys_are_compared_as_decoded(
    sync_client: Any, database_url: str, keys: Keys, data: st.DataObject, protocol: str
) -> None:
    tag = uuid.uuid4().hex[:10]
    ids = [f"{tag}-{n}" for n in range(3)]
    path, members = _envelope_members(protocol, keys.default.write, ids)
    text, names = data.draw(envelope(members))
    headers = {"Content-Type": "application/json", **keys.default.auth("write")}
    if protocol != "native":
        headers.pop("Authorization")  # the key is in the body, perhaps twice
    response = sync_client.post(path, content=text.encode(), headers=headers)
    assert response.status_code < 500, response.text
    stored = asyncio.run(_stored(database_url, tag))
    if len(set(names)) != len(names):
        assert response.status_code == 400 and "ambiguous" in response.json()["detail"], text
        assert stored == {}
    else:
        assert response.status_code == 200, (text, response.text)
        assert sorted(stored) == ids


@FUZZ
@given(
    numbers=st.lists(exponent_numbers, min_size=1, max_size=3),
    protocol=st.sampled_from(["native", "segment"]),
)
def test_exponents_are_stored_as_their_values_or_refused_with_the_reason(
    sync_client: Any, database_url: str, keys: Keys, numbers: list[str], protocol: str
) -> None:
    tag = uuid.uuid4().hex[:10]
    properties = "{" + ",".join(f'"k{i}":{n}' for i, n in enumerate(numbers)) + "}"
    if protocol == "native":
        event = (
            '{"event_name":"e","user_id":"u",'
            f'"idempotency_key":"{tag}","properties":{properties}}}'
        )
        response = sync_client.post(
            "/events",
            content=event.encode(),
            headers={"Content-Type": "application/json", **keys.default.auth("write")},
        )
        refusals = [r["error"] for r in response.json()["results"] if r["status"] == "rejected"]
    else:
        message = (
            '{"type":"track","event":"e","userId":"u",'
            f'"messageId":"{tag}","properties":{properties}}}'
        )
        response = sync_client.post(
            "/v1/batch",
            content=f'{{"batch":[{message}]}}'.encode(),
            headers=keys.default.auth("write"),
        )
        refusals = [r["error"] for r in response.json()["rejected"]]
    assert response.status_code < 500, response.text
    stored = asyncio.run(_stored(database_url, tag))

    def storable(literal: str) -> bool:
        value = Decimal(literal)
        exponent = value.as_tuple().exponent
        assert isinstance(exponent, int)
        in_range = value.adjusted() < 131072 and -exponent <= 16383
        return in_range and written_out_digits(literal) <= 400

    if all(storable(n) for n in numbers):
        assert refusals == [], (numbers, refusals)
        # Nothing dropped or rewritten: every value as sent (the text may differ: 1e2 is 100).
        kept = {k: v for k, v in stored[tag].items() if k != "$segment"}
        assert kept == {f"k{i}": Decimal(n) for i, n in enumerate(numbers)}
    else:
        assert len(refusals) == 1 and (
            "written out" in refusals[0] or "out of range" in refusals[0]
        )
        assert stored == {}


@FUZZ
@given(form=many_field_forms)
def test_forms_of_many_fields_get_a_4xx_or_are_stored(
    sync_client: Any, database_url: str, keys: Keys, form: tuple[int, int, str, bool]
) -> None:
    others, where, data_name, twice = form
    tag = uuid.uuid4().hex[:10]

    def data(uuid_: str) -> str:
        batch = [{"event": "e", "distinct_id": "d", "uuid": uuid_}]
        return urllib.parse.quote(json.dumps({"api_key": keys.default.write, "batch": batch}))

    fields = [f"f{n}=x" for n in range(others)]
    fields.insert(min(where, len(fields)), f"{data_name}={data(tag + '-a')}")
    if twice:
        fields.append(f"data={data(tag + '-b')}")
    response = sync_client.post(
        "/e/", content="&".join(fields).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )  # fmt: skip
    assert response.status_code < 500, response.text
    stored = asyncio.run(_stored(database_url, tag))
    if len(fields) > 20:
        assert response.status_code == 400 and "at most 20 fields" in response.json()["detail"]
    elif twice:
        assert response.status_code == 400 and "ambiguous" in response.json()["detail"]
    else:
        assert response.status_code == 200, response.text
        assert list(stored) == [tag + "-a"]
        return
    assert stored == {}


# --- #22: gzip bodies as sequences of members -----------------------------------------------


@FUZZ
@given(data=st.data(), route=st.sampled_from(["/events", "/batch/", "/v1/batch"]))
def test_gzip_member_sequences_get_a_clean_4xx_or_are_stored_whole(
    sync_client: Any, database_url: str, keys: Keys, data: st.DataObject, route: str
) -> None:
    tag = uuid.uuid4().hex[:10]
    ids = [f"{tag}-{n}" for n in range(3)]
    headers = {"Content-Type": "application/json", **keys.default.auth("write")}
    if route == "/events":
        payload = {"events": [{"event_name": "e", "user_id": "u", "idempotency_key": i}
                              for i in ids]}  # fmt: skip
        headers["Content-Encoding"] = "gzip"
    elif route == "/batch/":  # bare gzip, as posthog-js sends it, the key inside
        events = [{"event": "e", "distinct_id": "d", "uuid": i} for i in ids]
        payload = {"api_key": keys.default.write, "batch": events}
        del headers["Authorization"]
    else:  # bare gzip too, the key in the Authorization header
        payload = {"batch": [{"type": "track", "event": "e", "userId": "u", "messageId": i}
                             for i in ids]}  # fmt: skip
    body, kind = data.draw(gzip_members(json.dumps(payload).encode(), MAX_GZIP_MEMBERS))
    event(kind)
    response = sync_client.post(route, content=body, headers=headers)
    stored = asyncio.run(_stored(database_url, tag))
    if kind == "ok":
        assert response.status_code == 200, (kind, response.text)
        assert sorted(stored) == ids
        return
    assert response.status_code == 400, (kind, response.text)
    answer = response.json()
    assert answer["error"] == "malformed_body"
    expected = {"too_many": ("gzip members",), "truncated": ("truncated",),
                "junk": ("not valid gzip", "truncated", "gzip members")}[kind]  # fmt: skip
    if route != "/events" and len(body) < 2:
        expected = ("JSON",)  # bare: too short to carry the gzip magic, read as JSON
    assert any(text in answer["detail"] for text in expected), (kind, answer)
    assert stored == {}
