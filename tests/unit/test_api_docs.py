"""docs/api.md and the OpenAPI schema agree with the code.

The doc's tables are read as text (lines split on `|`) and compared with what the code
answers: the error codes, the statuses of each route, the /metrics parameters, the /health
fields. The schema's examples must be valid against their schemas and look like real
values, not generated strings. No servers: the app is built but never started.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema_rs
import msgspec
import pytest
from litestar import Litestar
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotFoundException,
    ValidationException,
)
from litestar.serialization import encode_json
from litestar.types import Message

from event_metrics import cors, http_server, openapi_examples, posthog, segment
from event_metrics.app import ERROR_STATUSES, create_app
from event_metrics.auth import KeyStore
from event_metrics.freshness import Freshness
from event_metrics.metrics import MetricsResponse
from event_metrics.queue import IngestQueue
from event_metrics.replicator import Replicator
from event_metrics.rollups import RollupRefresher
from event_metrics.routes import SDK_PATHS
from event_metrics.services import Gauges, Health
from event_metrics.settings import Settings, variables
from event_metrics.writer import WriterPool

DOC = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text(encoding="utf-8")
SETTINGS = Settings.build()
# The doc section of each route, and the (path, method) it documents.
ROUTES = {
    "POST /events": [("/events", "post")],
    "GET /metrics": [("/metrics", "get")],
    "GET /events/names": [("/events/names", "get")],
    "GET /export": [("/export", "get")],
    "GET /health": [("/health", "get")],
    "Segment, RudderStack and PostHog SDKs": [(path, "post") for path in SDK_PATHS],
}
STATUS = re.compile(r"\b[1-5]\d\d\b")
CODE = re.compile(r"`([a-z_]+)`")


@pytest.fixture(scope="module")
def app() -> Litestar:
    return create_app(SETTINGS)


@pytest.fixture(scope="module")
def schema(app: Litestar) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(encode_json(app.openapi_schema.to_schema()))
    return document


# --- reading the doc ---------------------------------------------------------------------


def sections() -> dict[str, str]:
    """The text under each `## ` heading, by heading."""
    parts = re.split(r"^## ", DOC, flags=re.MULTILINE)[1:]
    return {part.split("\n", 1)[0].strip(): part for part in parts}


def tables(text: str) -> list[list[dict[str, str]]]:
    """Each markdown table in the text, as rows of {column header: cell}."""
    found, lines = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            lines.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif lines:
            header, _, *rows = lines  # the second line is |---|---|
            assert all(len(row) == len(header) for row in rows), f"ragged table: {header}"
            found.append([dict(zip(header, row, strict=True)) for row in rows])
            lines = []
    return found


def table_with(text: str, column: str) -> list[dict[str, str]]:
    (table,) = [table for table in tables(text) if column in table[0]]
    return table


def names(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


# --- error codes -------------------------------------------------------------------------


async def service_error_codes(app: Litestar) -> set[tuple[int, str]]:
    """(status, code) of every error the service answers: the app's table, its handlers of
    Litestar's and unexpected exceptions, and what the HTTP layer and CORS answer."""
    codes = {(status, code) for status, code, _ in ERROR_STATUSES.values()}
    handlers = app.exception_handlers
    for handler, exc in [
        (handlers[ValidationException], ValidationException()),
        (handlers[HTTPException], NotFoundException()),
        (handlers[HTTPException], MethodNotAllowedException()),
        (handlers[Exception], RuntimeError("a bug")),
    ]:
        answer = handler(None, exc)
        codes.add((answer.status_code, answer.content.error))
    limits = http_server.Limits(SETTINGS.http)
    for raw in (http_server.HEAD_TIMEOUT, http_server.BODY_TIMEOUT, http_server.HEAD_TOO_LARGE,
                limits.too_many):  # fmt: skip
        head, _, body = raw.partition(b"\r\n\r\n")
        codes.add((int(head.split()[1]), json.loads(body)["error"]))
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await cors.answer_preflight(send, "read", None)  # an origin that may not call /metrics
    codes.add((sent[0]["status"], json.loads(sent[1]["body"])["error"]))
    return codes


def documented_error_codes(section: str) -> set[tuple[int, str]]:
    codes = set()
    for row in table_with(sections()[section], "`error`"):
        status = int(STATUS.findall(row["status"])[0])  # "405 etc." is 405
        codes |= {(status, code) for code in CODE.findall(row["`error`"])}
    return codes


async def test_the_error_table_lists_exactly_the_codes_the_service_answers(app: Litestar) -> None:
    truth = await service_error_codes(app)
    documented = documented_error_codes("Errors")
    assert not truth - documented, f"docs/api.md's Errors table lacks {sorted(truth - documented)}"
    assert not documented - truth, f"docs/api.md lists codes nothing answers: {documented - truth}"
    assert documented_error_codes("Authentication") <= truth


# --- statuses per route ------------------------------------------------------------------


def documented_statuses(section: str) -> set[int]:
    """The statuses in the `status` (or `HTTP status`) column of the section's tables."""
    found = set()
    for table in tables(section):
        for row in table:
            cell = row.get("status", row.get("HTTP status", ""))
            found |= {int(status) for status in STATUS.findall(cell)}
    return found


@pytest.mark.parametrize("heading", ROUTES)
def test_each_route_documents_the_statuses_of_its_schema(
    heading: str, schema: dict[str, Any]
) -> None:
    documented = documented_statuses(sections()[heading])
    for path, method in ROUTES[heading]:
        answered = {int(status) for status in schema["paths"][path][method]["responses"]}
        assert documented == answered, (
            f"{method.upper()} {path}: doc {documented}, schema {answered}"
        )


# --- GET /metrics parameters -------------------------------------------------------------


def test_the_metrics_parameters_are_those_of_the_schema(schema: dict[str, Any]) -> None:
    rows = table_with(sections()["GET /metrics"], "parameter")
    documented = {(names(row["parameter"])[0], row["default"] == "required") for row in rows}
    parameters = schema["paths"]["/metrics"]["get"]["parameters"]
    assert documented == {(p["name"], p.get("required", False)) for p in parameters}


def test_the_metrics_answers_shown_have_every_field_and_freshness_is_documented() -> None:
    section = sections()["GET /metrics"]
    fields = {field.encode_name for field in msgspec.structs.fields(MetricsResponse)}
    inner = {field.encode_name for field in msgspec.structs.fields(Freshness)}
    shown = [json.loads(block) for block in re.findall(r"```json\n(\{.*?)```", section, re.DOTALL)]
    assert len(shown) >= 2
    for answer in shown:
        assert set(answer) == fields
        assert set(answer["freshness"]) == inner
    documented = {name for row in table_with(section, "field") for name in names(row["field"])}
    assert documented == inner, "docs/api.md's freshness table differs from Freshness"


# --- GET /health fields ------------------------------------------------------------------


def health_parts() -> dict[str, set[str]]:
    """The keys of each nested object of /health, from the parts that report them."""
    return {
        "writers": set(WriterPool(SETTINGS.writer, IngestQueue(10), pool=None).status()),
        "keys": set(KeyStore("", refresh_s=1, retry_max_s=1).status()),
        "replication": set(Replicator("", "", SETTINGS.replication).status()),
        "rollups": set(RollupRefresher("", SETTINGS.rollups).status()),
        "telemetry": set(Gauges(lambda: None, SETTINGS.telemetry).status()),  # type: ignore[arg-type, return-value]
    }


def health_fields() -> set[str]:
    """Every field of the answer: `writers.state` for a nested one."""
    fields = {field.encode_name for field in msgspec.structs.fields(Health)}
    return fields | {f"{part}.{key}" for part, keys in health_parts().items() for key in keys}


def test_the_health_table_covers_every_field() -> None:
    parts = health_parts()
    documented = set()
    for row in table_with(sections()["GET /health"], "field"):
        for name in names(row["field"]):
            if name.startswith("*."):  # every nested object that has this key
                key = name[2:]
                documented |= {f"{part}.{key}" for part, keys in parts.items() if key in keys}
            else:
                documented.add(name)
    fields = health_fields()
    # A nested object is documented by its keys (`writers.state`, ...).
    missing = {f for f in fields - documented if not any(d.startswith(f"{f}.") for d in documented)}
    assert not missing, f"docs/api.md's /health table lacks {sorted(missing)}"
    assert not documented - fields, f"no such /health fields: {documented - fields}"


def assert_health_shape(body: dict[str, Any]) -> None:
    fields = {field.encode_name: field for field in msgspec.structs.fields(Health)}
    assert set(body) <= set(fields)
    assert {name for name, field in fields.items() if field.required} <= set(body)
    for part, keys in health_parts().items():
        if part in body:
            assert set(body[part]) == keys, part


def test_the_health_examples_have_the_fields_of_the_answer(schema: dict[str, Any]) -> None:
    example = re.search(r"```json\n(.*?)```", sections()["GET /health"], re.DOTALL)
    assert example
    assert_health_shape(json.loads(example.group(1)))
    for response in schema["paths"]["/health"]["get"]["responses"].values():
        for named in response["content"]["application/json"]["examples"].values():
            assert_health_shape(named["value"])


# --- the rest of the doc -----------------------------------------------------------------


def test_named_settings_exist() -> None:
    settings = {variable.env.name for variable in variables()}
    named = set(re.findall(r"`([A-Z][A-Z0-9]*_[A-Z0-9_]+)`", DOC))
    assert named <= settings, f"docs/api.md names settings that do not exist: {named - settings}"


def test_the_sdk_answers_are_documented_by_their_structs() -> None:
    fields = {f.encode_name for f in msgspec.structs.fields(openapi_examples.SegmentAnswer)}
    assert set(segment.answer(1, 0, [])) == fields
    fields = {f.encode_name for f in msgspec.structs.fields(openapi_examples.PostHogAnswer)}
    assert set(posthog.answer(1, 0, [])) == fields


# --- the schema's examples ---------------------------------------------------------------


def examples(node: Any, where: str = "") -> list[tuple[str, Any, dict[str, Any]]]:
    """(where, value, schema) of every example in the document: the named examples of
    media types and parameters, and the `examples` lists of schemas."""
    found = []
    if isinstance(node, dict):
        listed = node.get("examples")
        if isinstance(listed, dict) and "schema" in node:
            found += [
                (f"{where}/{name}", ex["value"], node["schema"]) for name, ex in listed.items()
            ]
        elif isinstance(listed, list):
            without = {key: value for key, value in node.items() if key != "examples"}
            found += [(where, value, without) for value in listed]
        for key, value in node.items():
            if key not in ("examples", "example"):
                found += examples(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            found += examples(item, f"{where}/{index}")
    return found


def strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [*value, *(s for item in value.values() for s in strings(item))]
    if isinstance(value, list):
        return [s for item in value for s in strings(item)]
    return []


def random_looking(text: str) -> list[str]:
    """Runs of 15 or more letters in mixed case: what generated examples look like
    (`DwEkQQHiBrmXZcSFtoJx`); real words and codes are shorter or in one case."""
    runs = re.findall(r"[A-Za-z]{15,}", text)
    return [run for run in runs if not run.islower() and not run.isupper()]


def test_every_example_is_valid_and_looks_real(schema: dict[str, Any]) -> None:
    found = examples(schema["paths"]) + examples(schema["components"])
    assert len(found) > 50
    for where, value, part in found:
        validator = jsonschema_rs.Draft202012Validator({**part, "components": schema["components"]})
        errors = [error.message for error in validator.iter_errors(value)]
        assert not errors, f"{where}: {value!r}: {errors}"
        assert not [s for s in strings(value) if random_looking(s)], f"{where}: {value!r}"


async def test_every_response_has_examples_and_their_errors_are_real(
    app: Litestar, schema: dict[str, Any]
) -> None:
    truth = await service_error_codes(app)
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                content = response["content"]  # JSON, or NDJSON lines (/export's 200)
                media = content.get("application/json") or content["application/x-ndjson"]
                named = media.get("examples")
                assert named, f"{method.upper()} {path} {status} has no example"
                for example in named.values():
                    code = example["value"].get("error")
                    assert code is None or (int(status), code) in truth, (path, status, code)


def test_named_examples_are_present(schema: dict[str, Any]) -> None:
    paths = schema["paths"]

    def named(path: str, method: str, status: str | None = None) -> set[str]:
        operation = paths[path][method]
        if status is None:
            content = operation["requestBody"]["content"]
        else:
            content = operation["responses"][status]["content"]
        return {name for media in content.values() for name in media.get("examples", {})}

    assert {"event", "batch", "wrapped"} <= named("/events", "post")
    assert {"committed"} <= named("/events", "post", "200")
    assert {"some_rejected", "malformed_body"} <= named("/events", "post", "400")
    assert {"hourly_per_channel"} <= named("/metrics", "get", "200")
    assert {"invalid_parameter", "answer_too_large"} <= named("/metrics", "get", "400")
    assert {"ok"} <= named("/health", "get", "200")
    assert {"unavailable"} <= named("/health", "get", "503")
    assert {"batch", "track"} <= named("/v1/batch", "post")
    assert {"batch", "capture"} <= named("/batch", "post")
    event = paths["/events"]["post"]["requestBody"]["content"]["application/json"]
    assert event["examples"]["event"]["value"]["event_name"] == "signup"
