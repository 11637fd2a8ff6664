"""What SDK clients send is read exactly, answered in their own words, and kept whole:
form bodies, duplicate keys however they are spelled, the reserved names the mapping
uses, each event's own project, and rejection reasons that name the client's fields."""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from conftest import Keys

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


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
