"""Parameters shared by several routes: the charger id path parameter, ``fields`` and windows."""

from __future__ import annotations

import functools
from datetime import datetime, timedelta
from typing import Annotated, Any, Final, TypeVar, get_args, get_origin

from fastapi import Path, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, TypeAdapter, ValidationError

from query_api.problems import ProblemError
from query_api.timespec import TimeSpecError, Window, resolve_window
from telemetry_common import influxql
from telemetry_common.ids import ID_PATTERN, Id
from telemetry_common.influxql import QueryBuildError
from telemetry_common.schema import MAX_VALUE_KEYS

_ID_DOC: Final = f"charger id, {ID_PATTERN}"
ChargerId = Annotated[str, Path(pattern=ID_PATTERN, description=_ID_DOC, examples=["gw-1-cp001"])]
#: The charger id of a route that checks it itself, after the key (:func:`checked_id`); the
#: pattern is documented as for :data:`ChargerId`.
UncheckedChargerId = Annotated[
    str,
    Path(description=_ID_DOC, examples=["gw-1-cp001"], json_schema_extra={"pattern": ID_PATTERN}),
]
_ID: Final = TypeAdapter(Id)


def checked_id(value: str, name: str = "charger_id") -> str:
    """``value`` if it is an allowed id; else the 422 that FastAPI gives a path parameter typed
    :data:`ChargerId` (same errors, same problem document)."""
    try:
        return _ID.validate_python(value)
    except ValidationError as exc:
        errors = [{**e, "loc": ("path", name, *e["loc"])} for e in exc.errors()]
        raise RequestValidationError(errors) from exc


FIELDS_DOC: Final = "value keys, comma-separated or repeated (default: every field)"
START_DOC: Final = "RFC 3339 (`2026-05-01T12:00:00Z`), `now` or relative (`-1h`)"
END_DOC: Final = "RFC 3339, `now` or relative; default now"
Fields = Annotated[list[str] | None, Query(description=FIELDS_DOC, examples=["power_w,soc_pct"])]
Start = Annotated[str | None, Query(description=START_DOC, examples=["-1h"])]
End = Annotated[str | None, Query(description=END_DOC, examples=["now"])]
Model = TypeVar("Model", bound=BaseModel)


def query_of(request: Request, model: type[Model]) -> Model:
    """``model`` read from the query string as FastAPI reads query parameters (a list field
    takes every value of its name, any other field the last); errors are FastAPI's 422."""
    given = request.query_params
    raw: dict[str, Any] = {}
    for name, many in _fields_of(model):
        if name in given:
            raw[name] = given.getlist(name) if many else given[name]
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        errors = [{**e, "loc": ("query", *e["loc"])} for e in exc.errors()]
        raise RequestValidationError(errors) from exc


def checked_path_and_query(
    request: Request, charger_id: str, model: type[Model]
) -> tuple[str, Model]:
    """:func:`checked_id` and :func:`query_of` together: every error of both in one 422, as
    FastAPI reports path and query parameters."""
    errors: list[Any] = []
    try:
        charger_id = checked_id(charger_id)
    except RequestValidationError as exc:
        errors.extend(exc.errors())
    try:
        query = query_of(request, model)
    except RequestValidationError as exc:
        raise RequestValidationError([*errors, *exc.errors()]) from exc
    if errors:
        raise RequestValidationError(errors)
    return charger_id, query


def query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """The OpenAPI ``parameters`` of :func:`query_of`'s query string (``openapi_extra``)."""
    schema = model.model_json_schema()
    required = set(schema.get("required", ()))
    out: list[dict[str, Any]] = []
    for name, prop in schema["properties"].items():
        param = {"name": name, "in": "query", "required": name in required, "schema": prop}
        if "description" in prop:
            param["description"] = prop["description"]
        out.append(param)
    return out


@functools.cache
def _fields_of(model: type[BaseModel]) -> tuple[tuple[str, bool], ...]:
    """Each field of ``model`` and whether it takes every value of its name (a list), worked
    out once per model rather than on every request."""
    return tuple((name, _takes_many(f.annotation)) for name, f in model.model_fields.items())


def _takes_many(annotation: Any) -> bool:
    return get_origin(annotation) is list or any(
        get_origin(a) is list for a in get_args(annotation)
    )


def split_fields(fields: list[str] | None) -> list[str] | None:
    """The field names of ``fields`` (deduplicated, checked); None for every field."""
    if fields is None:
        return None
    names = [name.strip() for item in fields for name in item.split(",") if name.strip()]
    if not names:
        return None
    if len(names) > MAX_VALUE_KEYS:
        raise ProblemError(422, "invalid-fields", f"at most {MAX_VALUE_KEYS} fields")
    for name in names:
        try:
            influxql.check_field(name)
        except QueryBuildError as exc:
            raise ProblemError(422, "invalid-fields", str(exc)) from exc
    return list(dict.fromkeys(names))


def window(
    start: str | None,
    end: str | None,
    *,
    now: datetime,
    default_range: timedelta,
    max_range: timedelta,
) -> Window:
    """:func:`resolve_window` with its errors as 422 problems."""
    try:
        return resolve_window(start, end, now=now, default_range=default_range, max_range=max_range)
    except TimeSpecError as exc:
        raise ProblemError(422, "invalid-time", str(exc)) from exc
