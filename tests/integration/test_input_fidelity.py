"""What clients send is read exactly, answered in their own words, and kept whole (#22):
form bodies, duplicate keys however they are spelled, the reserved names the SDK mapping
uses, each event's own project, rejection reasons that name the client's fields, numbers
as stored, and a database refusal that answers without repeating the database's text."""

from __future__ import annotations

import json
import urllib.parse
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from clickhouse_driver import Client
from litestar.testing import AsyncTestClient
from posting import ev

from conftest import ClientFactory, Keys
from event_metrics.replicator import Replicator
from event_metrics.settings import Settings

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
_NOW = datetime.now(UTC).replace(microsecond=0)
WINDOW_FROM = (_NOW - timedelta(days=200)).isoformat()
WINDOW_TO = (_NOW + timedelta(days=2)).isoformat()


async def stored(db: asyncpg.Connection) -> list[asyncpg.Record]:
    return await db.fetch(
        "SELECT project_id, event_name, user_id, idempotency_key, properties::text AS properties "
        "FROM events ORDER BY id"
    )


def ph_event(uuid: str, **fields: Any) -> dict[str, Any]:
    return {"event": "e", "distinct_id": "d", "uuid": uuid, **fields}


# --- forms (#22 item 5) ---------------------------------------------------------------------


@pytest.mark.parametrize("extra_fields", [0, 19, 20, 5000])
async def test_a_form_with_many_fields_is_a_400_that_says_so(
    client: AsyncTestClient[Any], db: asyncpg.Connection, keys: Keys, extra_fields: int
) -> None:
    data = json.dumps({"api_key": keys.default.write, "batch": [ph_event("f1")]})
    form = "data=" + urllib.parse.quote(data) + "".join(f"&f{n}=x" for n in range(extra_fields))
    response = await client.post("/e/", content=form.encode(), headers=FORM, auth=None)
    if extra_fields + 1 <= 20:
        assert response.status_code == 200, response.text
        assert [r["idempotency_key"] for r in await stored(db)] == ["f1"]
    else:
        assert response.status_code == 400, response.text
        body = response.json()
        assert body["error"] == body["code"] == "malformed_body"
        assert "at most 20 fields" in body["detail"] and str(extra_fields + 1) in body["detail"]
        assert await stored(db) == []


async def test_a_form_with_two_data_fields_is_ambiguous(
    client: AsyncTestClient[Any], db: asyncpg.Connection, keys: Keys
) -> None:
    first = json.dumps({"api_key": keys.default.write, "batch": [ph_event("a")]})
    second = json.dumps({"api_key": keys.default.write, "batch": [ph_event("b")]})
    # The second spelled with an escape in its name, which the form decodes to "data".
    form = f"data={urllib.parse.quote(first)}&d%61ta={urllib.parse.quote(second)}"
    response = await client.post("/e/", content=form.encode(), headers=FORM, auth=None)
    assert response.status_code == 400, response.text
    assert "ambiguous" in response.json()["detail"]
    assert await stored(db) == []


# --- a write PostgreSQL refuses (#22 item 11) ------------------------------------------------


@pytest.mark.parametrize("path", ["/events", "/v1/batch"])
async def test_a_refused_write_answers_a_generic_500_and_logs_the_reason(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection,
    caplog: pytest.LogCaptureFixture,
    path: str,
) -> None:
    # A trigger stands for any refusal a retry cannot fix; its text names a value.
    await db.execute(
        """
        CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF NEW.event_name = 'poison' THEN
            RAISE EXCEPTION 'secret-internal-detail for %', NEW.user_id;
          END IF;
          RETURN NEW;
        END $$;
        CREATE TRIGGER refuse_poison BEFORE INSERT ON events
          FOR EACH ROW EXECUTE FUNCTION refuse_poison();
        """
    )
    try:
        if path == "/events":
            response = await client.post("/events", json=ev("p", event_name="poison"))
        else:
            message = {"type": "track", "event": "poison", "userId": "u", "messageId": "p"}
            response = await client.post(path, json={"batch": [message]})
    finally:
        await db.execute("DROP TRIGGER refuse_poison ON events; DROP FUNCTION refuse_poison()")
    assert response.status_code == 500, response.text
    body = response.json()
    request_id = response.headers["x-request-id"]
    assert body["error"] == "storage_rejected" and body["request_id"] == request_id
    assert request_id in body["detail"]
    assert "secret-internal-detail" not in response.text and "RaiseError" not in response.text
    logged = [r.getMessage() for r in caplog.records if request_id in r.getMessage()]
    assert any("secret-internal-detail" in line for line in logged), logged
    assert await stored(db) == []


# --- rejection reasons in the client's words (#22 item 10) -----------------------------------


def track(**fields: Any) -> dict[str, Any]:
    return {"type": "track", "event": "e", "userId": "u", **fields}


LONG = "x" * 201
SEGMENT_REASONS = [
    ({"type": "track", "event": "e"}, "userId and anonymousId are missing"),
    ({"type": "identify"}, "userId and anonymousId are missing"),
    (track(userId=LONG), "userId: Expected `str` of length <= 200"),
    (track(userId=None, anonymousId=["a"]), "anonymousId: Expected `str`, got `array`"),
    (track(event=""), "event: Expected `str` of length >= 1"),
    (track(messageId=LONG), "messageId: Expected `str` of length <= 200"),
    (track(timestamp="soon"), "timestamp: 'soon' is not an ISO 8601 time"),
    (track(originalTimestamp="2026-01-01T00:00:00"),
     "originalTimestamp: '2026-01-01T00:00:00' has no UTC offset"),
    (track(sentAt="later"), "sentAt: 'later' is not an ISO 8601 time"),
    (track(timestamp="2999-01-01T00:00:00Z"), "timestamp 2999-01-01T00:00:00+00:00 is more than"),
]  # fmt: skip
POSTHOG_REASONS = [
    ({"distinct_id": "d"}, "event is missing"),
    ({"event": 7, "distinct_id": "d"}, "event: Expected `str`, got `int`"),
    ({"event": "e"}, "distinct_id is missing"),
    ({"event": "e", "distinct_id": LONG}, "distinct_id: Expected `str` of length <= 200"),
    ({"event": "e", "properties": {"distinct_id": LONG}},
     "properties.distinct_id: Expected `str` of length <= 200"),
    ({"event": "e", "distinct_id": "d", "uuid": ""}, "uuid: Expected `str` of length >= 1"),
    ({"event": "e", "distinct_id": "d", "timestamp": "soon"},
     "timestamp: 'soon' is not an ISO 8601 time"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("path", "cases"), [("/v1/batch", SEGMENT_REASONS), ("/batch/", POSTHOG_REASONS)]
)
async def test_rejection_reasons_name_the_field_the_client_sent(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection,
    path: str,
    cases: list[tuple[dict[str, Any], str]],
) -> None:
    response = await client.post(path, json={"batch": [message for message, _ in cases]})
    assert response.status_code == 200, response.text
    rejected = response.json()["rejected"]
    assert [r["index"] for r in rejected] == list(range(len(cases)))
    for (_, reason), answer in zip(cases, rejected, strict=True):
        assert answer["error"].startswith(reason), answer
        for column in ("event_name", "user_id", "idempotency_key", "sent_at"):
            assert column not in answer["error"]
    assert await stored(db) == []


# --- duplicate keys, however they are spelled (#22 item 7) -----------------------------------


def escaped(name: str) -> str:
    """The name with its first letter written as a \\u escape: the same key, decoded."""
    return f"\\u{ord(name[0]):04x}{name[1:]}"


def envelope_cases(write_key: str) -> list[tuple[str, bytes]]:
    a, b = json.dumps([ev("a")]), json.dumps([ev("b")])
    seg = [json.dumps([track(messageId=m)]) for m in ("a", "b")]
    ph = [json.dumps([ph_event(u)]) for u in ("a", "b")]
    key = json.dumps(write_key)
    one_ph = f'"event":"e","distinct_id":"d","uuid":"a","api_key":{key}'
    cases = [
        ("/events", f'{{"events":{a},"{escaped("events")}":{b}}}'),
        ("/events", f'{{"{escaped("events")}":{a},"events":{b}}}'),
        ("/events", f'{{"events":{a},"events":{b}}}'),
        ("/v1/batch", f'{{"batch":{seg[0]},"{escaped("batch")}":{seg[1]}}}'),
        ("/v1/batch", f'{{"batch":{seg[0]},"writeKey":{key},"{escaped("writeKey")}":"w"}}'),
        ("/v1/batch", f'{{"batch":{seg[0]},"sentAt":"2026-01-01T00:00:00Z",'
                      f'"{escaped("sentAt")}":"2026-01-02T00:00:00Z"}}'),
        ("/v1/track", f'{{"type":"track","event":"a","userId":"u","messageId":"a",'
                      f'"{escaped("event")}":"b"}}'),
        ("/batch/", f'{{"api_key":{key},"batch":{ph[0]},"{escaped("batch")}":{ph[1]}}}'),
        ("/batch/", f'{{"api_key":{key},"batch":{ph[0]},"{escaped("api_key")}":"x"}}'),
        ("/batch/", f'{{"token":{key},"batch":{ph[0]},"{escaped("token")}":"x"}}'),
        ("/batch/", f'{{"api_key":{key},"batch":{ph[0]},"sent_at":"2026-01-01T00:00:00Z",'
                    f'"{escaped("sent_at")}":"2026-01-02T00:00:00Z"}}'),
        ("/capture/", f'{{{one_ph},"{escaped("distinct_id")}":"other"}}'),
        ("/capture/", f'{{{one_ph},"{escaped("uuid")}":"b"}}'),
    ]  # fmt: skip
    return [(path, body.encode()) for path, body in cases]


async def test_a_key_written_twice_in_any_envelope_is_ambiguous(
    client: AsyncTestClient[Any], db: asyncpg.Connection, keys: Keys
) -> None:
    for path, body in envelope_cases(keys.default.write):
        response = await client.post(path, content=body)
        assert response.status_code == 400, (path, body, response.text)
        assert "ambiguous" in response.json()["detail"], (path, body)
    assert await stored(db) == []


@pytest.mark.parametrize("path", ["/v1/batch", "/batch/"])
async def test_a_message_naming_a_field_twice_is_refused_on_its_own(
    client: AsyncTestClient[Any], db: asyncpg.Connection, path: str
) -> None:
    if path == "/v1/batch":
        bad = (
            f'{{"type":"track","event":"a","{escaped("event")}":"b","userId":"u","messageId":"x"}}'
        )
        good = json.dumps(track(messageId="ok"))
    else:
        bad = f'{{"event":"a","{escaped("event")}":"b","distinct_id":"d","uuid":"x"}}'
        good = json.dumps(ph_event("ok"))
    response = await client.post(path, content=f'{{"batch":[{bad},{good}]}}'.encode())
    assert response.status_code == 200, response.text
    (rejected,) = response.json()["rejected"]
    assert rejected["index"] == 0 and "twice" in rejected["error"]
    assert [r["idempotency_key"] for r in await stored(db)] == ["ok"]


# --- the reserved names of the SDK mapping (#22 item 8) --------------------------------------


async def test_a_reserved_name_in_the_users_properties_keeps_both(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    mine = {"mine": True}
    segment_batch = [
        track(messageId="s1", properties={"$segment": mine}, context={"ip": "1.2.3.4"}),
        track(messageId="s2", properties={"$segment": mine, "$$segment": 2}, traits={"t": 1}),
    ]
    # Written with an escape, the user's name is the same "$segment" once decoded.
    escaped_own = json.dumps(track(messageId="s3", anonymousId="a")).replace(
        '"type"', f'"properties":{{"{escaped("$segment")}":1}},"type"'
    )
    body = json.dumps({"batch": segment_batch})[:-2] + "," + escaped_own + "]}"
    assert (await client.post("/v1/batch", content=body.encode())).status_code == 200
    posthog_batch = [
        ph_event("p1", properties={"$set": mine}, **{"$set": {"email": "a@b.c"}}),
        ph_event("p2", properties={"$set_once": mine}, **{"$set_once": {"first": 1}}),
        ph_event("p3", properties={"$posthog": mine}, options={"o": 1}),
        ph_event(
            "p4",
            properties={"$set": 1, "$$set": 2, "$set_once": 3, "$posthog": 4},
            options={"o": 1},
            **{"$set": {"s": 1}, "$set_once": {"so": 1}},
        ),
    ]
    assert (await client.post("/batch/", json={"batch": posthog_batch})).status_code == 200
    rows = {r["idempotency_key"]: json.loads(r["properties"]) for r in await stored(db)}
    assert rows["s1"]["$segment"] == mine
    assert rows["s1"]["$$segment"]["context"] == {"ip": "1.2.3.4"}
    assert rows["s2"]["$segment"] == mine and rows["s2"]["$$segment"] == 2
    assert rows["s2"]["$$$segment"]["traits"] == {"t": 1}
    assert rows["s3"]["$segment"] == 1 and rows["s3"]["$$segment"]["anonymousId"] == "a"
    assert rows["p1"] == {"$set": mine, "$$set": {"email": "a@b.c"}}
    assert rows["p2"] == {"$set_once": mine, "$$set_once": {"first": 1}}
    assert rows["p3"] == {"$posthog": mine, "$$posthog": {"options": {"o": 1}}}
    assert rows["p4"] == {
        "$set": 1, "$$set": 2, "$set_once": 3, "$posthog": 4,
        "$$$set": {"s": 1}, "$$set_once": {"so": 1}, "$$posthog": {"options": {"o": 1}},
    }  # fmt: skip


# --- each message in its own key's project (#22 item 9) --------------------------------------


async def project_totals(client: AsyncTestClient[Any], read_key: str) -> dict[str, int]:
    response = await client.get(
        "/metrics",
        params={"from": WINDOW_FROM, "to": WINDOW_TO,
                "group_by": "event_name"},
        headers={"Authorization": f"Bearer {read_key}"},
    )  # fmt: skip
    assert response.status_code == 200, response.text
    return {row["event_name"]: row["events"] for row in response.json()["series"]}


async def test_each_message_goes_to_the_project_of_its_own_key(
    client: AsyncTestClient[Any], db: asyncpg.Connection, keys: Keys
) -> None:
    a, b = keys.default, keys.other

    def token(key: str) -> dict[str, Any]:
        return {"token": key, "$lib": "web"}

    batch = [
        ph_event("p1", event="a1", properties=token(a.write)),
        ph_event("p2", event="b1", properties=token(b.write)),
        ph_event("p3", event="a2"),  # no token of its own: the request's
        ph_event("p4", event="b2", api_key=b.write),
        ph_event("p5", event="x", properties=token("emw_" + "n" * 32)),  # unknown
        ph_event("p6", event="x", properties=token(b.read)),  # not a write key
        ph_event("p7", event="a3", properties={"token": 7}),  # not a key: the user's own
    ]
    response = await client.post("/batch/", json={"api_key": a.write, "batch": batch}, auth=None)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["accepted"] == 5
    assert [(r["index"], r["error"].split(":")[0]) for r in answer["rejected"]] == [
        (4, "properties.token is not an active write key"),
        (5, "properties.token is not an active write key"),
    ]
    assert b.read not in response.text
    # posthog-js without a key in the envelope: its first event's token authorizes the
    # request, and every event still goes to its own token's project.
    bare = [
        ph_event("j1", event="b3", properties=token(b.write)),
        ph_event("j2", event="a4", properties=token(a.write)),
    ]
    response = await client.post("/e/", json=bare, auth=None)
    assert response.status_code == 200 and response.json()["accepted"] == 2
    # Segment's browser SDKs put the writeKey on each message too.
    segment_batch = [
        track(messageId="s1", event="b4", writeKey=b.write),
        track(messageId="s2", event="a5"),
    ]
    response = await client.post("/v1/batch", json={"batch": segment_batch, "writeKey": a.write})
    assert response.status_code == 200 and response.json()["accepted"] == 2

    rows = await stored(db)
    by_project = {
        project: sorted(r["idempotency_key"] for r in rows if r["project_id"] == project)
        for project in (a.project_id, b.project_id)
    }
    assert by_project == {
        a.project_id: ["j2", "p1", "p3", "p7", "s2"],
        b.project_id: ["j1", "p2", "p4", "s1"],
    }
    kept = "".join(r["properties"] or "" for r in rows)
    assert a.write not in kept and b.write not in kept
    assert json.loads(next(r for r in rows if r["idempotency_key"] == "p7")["properties"]) == {
        "token": 7
    }  # fmt: skip
    assert await project_totals(client, a.read) == {"a1": 1, "a2": 1, "a3": 1, "a4": 1, "a5": 1}
    assert await project_totals(client, b.read) == {"b1": 1, "b2": 1, "b3": 1, "b4": 1}


# --- numbers as stored (#22 item 6) ----------------------------------------------------------

# Each number as sent, and the text PostgreSQL's jsonb stores (and ClickHouse copies):
# digits and scale as sent, an exponent written out in full, the sign of a zero dropped.
NUMBERS = [
    ("12345678901234567890.5", "12345678901234567890.5"),
    ("123456789012345678901234567890", "123456789012345678901234567890"),
    ("1.50", "1.50"),
    ("-7", "-7"),
    ("1.0e2", "100"),
    ("1E+2", "100"),
    ("2.5E-3", "0.0025"),
    ("100e-2", "1.00"),
    ("-1.5e0", "-1.5"),
    ("1e-7", "0.0000001"),
    ("-0.0", "0.0"),
    ("0e-3", "0.000"),
    ("1.7976931348623157e308", "179769313486231570" + "0" * 291),
    ("5e-324", "0." + "0" * 323 + "5"),
    ("1e399", "1" + "0" * 399),  # 400 digits: the most MAX_NUMBER_DIGITS allows
]


async def test_numbers_are_stored_with_their_digits_and_exponents_written_out(
    make_client: ClientFactory,
    db: asyncpg.Connection,
    settings: Settings,
    clickhouse_url: str,
) -> None:
    properties = "{" + ",".join(f'"n{i}":{sent}' for i, (sent, _) in enumerate(NUMBERS)) + "}"
    event = f'{{"event_name":"e","user_id":"u","idempotency_key":"k","properties":{properties}}}'
    segment_message = json.dumps(track(messageId="s"))[:-1] + f',"properties":{properties}}}'
    async with make_client() as client:
        assert (await client.post("/events", content=event.encode())).status_code == 200
        response = await client.post("/v1/batch", content=f'{{"batch":[{segment_message}]}}')
        assert response.json()["accepted"] == 1, response.text
    for key in ("k", "s"):
        stored_numbers = await db.fetchrow(
            "SELECT "
            + ", ".join(f"properties->'n{i}' AS n{i}" for i in range(len(NUMBERS)))
            + " FROM events WHERE idempotency_key = $1",
            key,
        )
        assert [stored_numbers[f"n{i}"] for i in range(len(NUMBERS))] == [s for _, s in NUMBERS]
    # The mirror holds the same text, byte for byte.
    assert settings.database_url is not None
    await Replicator(settings.database_url, clickhouse_url, settings.replication).run_once()
    in_postgres = dict(await db.fetch("SELECT idempotency_key, properties::text FROM events"))
    mirror = Client.from_url(clickhouse_url)
    try:
        in_clickhouse = dict(mirror.execute("SELECT idempotency_key, properties FROM events FINAL"))
    finally:
        mirror.disconnect()
    assert in_clickhouse == in_postgres
    assert '"n4": 100,' in in_clickhouse["k"] and '"n14": 1' + "0" * 399 in in_clickhouse["k"]


@pytest.mark.parametrize(
    ("number", "digits"),
    [("1e400", 401), ("1e131071", 131072), ("-2.5E+1000", 1001), ("1e-400", 401)],
)
async def test_a_number_too_long_written_out_is_refused_with_the_reason(
    client: AsyncTestClient[Any], db: asyncpg.Connection, number: str, digits: int
) -> None:
    bad = (
        f'{{"event_name":"e","user_id":"u","idempotency_key":"bad","properties":{{"x":{number}}}}}'
    )
    body = f"[{bad},{json.dumps(ev('ok'))}]"
    response = await client.post("/events", content=body.encode())
    assert response.status_code == 400, response.text
    error = response.json()["results"][0]["error"]
    assert error == (
        f"properties: number {number} has {digits} digits written out, as PostgreSQL stores "
        "it; the limit is 400"
    )
    message = json.dumps(track(messageId="bad"))[:-1] + f',"properties":{{"x":{number}}}}}'
    response = await client.post("/v1/batch", content=f'{{"batch":[{message}]}}'.encode())
    assert response.json()["rejected"][0]["error"].startswith(f"number {number} has {digits}")
    assert [r["idempotency_key"] for r in await stored(db)] == ["ok"]


async def test_numbers_that_grow_an_event_past_its_limit_are_refused(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    # 250 numbers of 5 characters, written out 301 each: 1.3 KB sent, 75 KB stored.
    numbers = ",".join(f'"k{i}":1e300' for i in range(250))
    bad = f'{{"event_name":"e","user_id":"u","idempotency_key":"bad","properties":{{{numbers}}}}}'
    fits = ",".join(f'"k{i}":1e300' for i in range(150))  # 45 KB written out: stored
    good = f'{{"event_name":"e","user_id":"u","idempotency_key":"fits","properties":{{{fits}}}}}'
    response = await client.post("/events", content=f"[{bad},{good}]".encode())
    assert response.status_code == 400, response.text
    error = response.json()["results"][0]["error"]
    assert error.startswith("properties are ") and "the limit is 65536" in error, error
    message = json.dumps(track(messageId="bad"))[:-1] + f',"properties":{{{numbers}}}}}'
    response = await client.post("/v1/batch", content=f'{{"batch":[{message}]}}'.encode())
    assert response.json()["rejected"][0]["error"].startswith("message is "), response.text
    assert [r["idempotency_key"] for r in await stored(db)] == ["fits"]
    assert len(await db.fetchval("SELECT properties::text FROM events")) > 45_000


async def test_numbers_beyond_a_double_key_events_apart_without_a_500(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    # No idempotency key, a timestamp: the key is derived from the content, numbers too.
    def event(number: str) -> str:
        return (
            '{"event_name":"e","user_id":"u","timestamp":"2026-01-01T00:00:00Z",'
            f'"properties":{{"x":{number}}}}}'
        )

    body = f"[{event('1e309')},{event('1e310')},{event('1e309')}]"
    response = await client.post("/events", content=body.encode())
    assert response.status_code == 200, response.text
    assert [r["status"] for r in response.json()["results"]] == [
        "accepted", "accepted", "duplicate"
    ]  # fmt: skip
    assert len({r["idempotency_key"] for r in await stored(db)}) == 2
