"""What a 422 answers: FastAPI's {loc, msg, type, input} list, with every echoed value bounded and JSON-encodable.

A request may carry anything JSON (or Python's json) can parse: NaN, 1e400 (inf), lone UTF-16 surrogates, a 1 MB
string. Echoed as they are, the first three make the error answer itself fail (a 500: strict JSON has no NaN, UTF-8
has no lone surrogates) and the last doubles the request's size. So each echoed value keeps at most ECHO_CHARS
characters, and what strict JSON cannot hold is echoed as its repr.
"""

from __future__ import annotations

import json
import math
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

ECHO_CHARS = 200  # characters of an input echoed back
MESSAGE_CHARS = 1000  # characters of an error message (messages may quote the input)


def _text(value: str, limit: int) -> str:
    safe = value.encode("utf-8", "backslashreplace").decode("utf-8")  # a lone surrogate becomes '\\ud800'
    return safe if len(safe) <= limit else f"{safe[:limit]}... ({len(value)} characters)"


def echo(value: Any, limit: int = ECHO_CHARS) -> Any:
    """`value` as a bounded, strictly JSON-encodable echo: scalars as they are (strings cut at `limit`), containers
    kept only when their JSON text fits in `limit`, anything else as a cut repr."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if abs(value) < 2**63 else _text(str(value), limit)  # past int64: JSON readers lose digits
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, str):
        return _text(value, limit)
    if isinstance(value, dict | list | tuple):
        try:
            text = json.dumps(value, allow_nan=False, ensure_ascii=False)
            text.encode("utf-8")
        except (TypeError, ValueError, UnicodeEncodeError):  # NaN, surrogates, objects: show what it was
            return _text(repr(value), limit)
        return value if len(text) <= limit else _text(text, limit)
    return _text(repr(value), limit)


def safe_errors(errors: Any) -> list[dict[str, Any]]:
    """FastAPI/pydantic error dicts with `input` echoed safely, `msg` bounded, `ctx` values made JSON text."""
    out = []
    for error in errors:
        item = {
            "loc": [p if isinstance(p, int) else _text(str(p), ECHO_CHARS) for p in error.get("loc", ())],
            "msg": _text(str(error.get("msg", "")), MESSAGE_CHARS),
            "type": str(error.get("type", "value_error")),
        }
        if "input" in error:
            item["input"] = echo(error["input"])
        if error.get("ctx"):
            item["ctx"] = {
                str(k): echo(v if isinstance(v, int | float | str) else str(v)) for k, v in error["ctx"].items()
            }
        out.append(item)
    return out


async def request_validation_error(_request: Request, err: RequestValidationError) -> JSONResponse:
    """FastAPI's own 422 (same shape), with safe echoes."""
    return JSONResponse(status_code=422, content={"detail": safe_errors(err.errors())})
