"""The typed face of the ``ocpp`` library (PyPI ``ocpp`` 2.1.x), which ships no type hints.

mypy (strict) reads the declarations below; at run time the names are the library's own. Only
what this package and its tests use is declared; a signature here mirrors the library's, so a
library upgrade that changes one is caught by the tests, not by mypy. This keeps every other
module free of ``# type: ignore`` and needs no ``ignore_missing_imports`` override.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

__all__ = [
    "Call",
    "CallError",
    "ChargePoint",
    "ChargePoint201",
    "FormatViolationError",
    "FormationViolationError",
    "InternalError",
    "NotImplementedError",
    "OCPPError",
    "OccurenceConstraintViolationError",
    "OccurrenceConstraintViolationError",
    "PropertyConstraintViolationError",
    "ProtocolError",
    "TypeConstraintViolationError",
    "call",
    "call201",
    "call_result",
    "call_result201",
    "camel_to_snake_case",
    "datatypes",
    "datatypes201",
    "on",
]

F = TypeVar("F", bound=Callable[..., Any])

if TYPE_CHECKING:

    class OCPPError(Exception):
        code: str
        description: str
        details: dict[str, Any]

        def __init__(
            self, description: str | None = None, details: dict[str, Any] | None = None
        ) -> None: ...

    class NotImplementedError(OCPPError): ...  # shadows the builtin, as in the library

    class ProtocolError(OCPPError): ...

    class InternalError(OCPPError): ...

    class FormationViolationError(OCPPError): ...

    class FormatViolationError(OCPPError): ...  # 2.0.1's spelling

    class OccurrenceConstraintViolationError(OCPPError): ...  # 2.0.1's spelling

    class PropertyConstraintViolationError(OCPPError): ...

    class OccurenceConstraintViolationError(OCPPError): ...

    class TypeConstraintViolationError(OCPPError): ...

    class Call:
        unique_id: str
        action: str
        payload: dict[str, Any]

        def __init__(self, unique_id: str, action: str, payload: dict[str, Any]) -> None: ...

    class CallError:
        def __init__(
            self,
            unique_id: str,
            error_code: str,
            error_description: str,
            error_details: dict[str, Any] | None = None,
        ) -> None: ...

        def to_json(self) -> str: ...

    class ChargePoint:
        """``ocpp.v16.ChargePoint``: the 1.6 end of a connection, either side."""

        id: str
        logger: Any

        def __init__(
            self, id: str, connection: Any, response_timeout: int = 30, logger: Any = ...
        ) -> None: ...

        async def start(self) -> None: ...

        async def route_message(self, raw_msg: str | bytes) -> None: ...

        async def _handle_call(self, msg: Call) -> Any: ...

        async def _send(self, message: str) -> None: ...

        async def call(
            self,
            payload: Any,
            suppress: bool = True,
            unique_id: str | None = None,
            skip_schema_validation: bool = False,
        ) -> Any: ...

    class ChargePoint201(ChargePoint):
        """``ocpp.v201.ChargePoint``: the 2.0.1 end of a connection (the same interface)."""

    def on(action: str, *, skip_schema_validation: bool = False) -> Callable[[F], F]: ...

    def camel_to_snake_case(data: Any) -> Any: ...

    #: ``ocpp.v16.call`` / ``call_result`` / ``datatypes``: dataclasses per action.
    call: Any
    call_result: Any
    datatypes: Any
    #: ``ocpp.v201.call`` / ``call_result`` / ``datatypes``.
    call201: Any
    call_result201: Any
    datatypes201: Any
else:
    from ocpp.charge_point import camel_to_snake_case
    from ocpp.exceptions import (
        FormationViolationError,
        FormatViolationError,
        InternalError,
        NotImplementedError,
        OccurenceConstraintViolationError,
        OccurrenceConstraintViolationError,
        OCPPError,
        PropertyConstraintViolationError,
        ProtocolError,
        TypeConstraintViolationError,
    )
    from ocpp.messages import Call, CallError
    from ocpp.routing import on
    from ocpp.v16 import ChargePoint, call, call_result, datatypes
    from ocpp.v201 import ChargePoint as ChargePoint201
    from ocpp.v201 import call as call201
    from ocpp.v201 import call_result as call_result201
    from ocpp.v201 import datatypes as datatypes201
