"""JSON as the API accepts it: finite numbers, integers SQLite can store, shallow nesting.

Python's `json` module takes `NaN`, `Infinity`, `1e400` (as inf) and 5,000-digit integers, and recurses
once per nesting level; each of those later turned into a 500 somewhere (a NaN click coordinate, an
integer SQLite cannot bind, a RecursionError). One parser for every JSON the server reads from a client
(request bodies and `params` form fields) refuses them with a message instead.
"""

from __future__ import annotations

import json
import math
from typing import Any

from annotation_server.errors import InvalidRequestError

MAX_DEPTH = 32
MAX_INT = 2**63 - 1  # SQLite INTEGER; the `le=` of every integer query/path parameter
INT_RANGE = (-(2**63), MAX_INT)


def _constant(name: str) -> Any:
    raise InvalidRequestError(f"JSON holds {name}; numbers must be finite (send null or a number)")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidRequestError(f"JSON number {text[:40]} is out of range; numbers must be finite")
    return value


def _int(text: str) -> int:
    if len(text.lstrip("-")) > 19:
        raise InvalidRequestError(f"JSON integer {text[:24]}... has {len(text)} digits; integers fit in 64 bits")
    value = int(text)
    if not INT_RANGE[0] <= value <= INT_RANGE[1]:
        raise InvalidRequestError(f"JSON integer {text} is out of range; integers fit in 64 bits (SQLite's range)")
    return value


def _depth(value: Any) -> int:
    """Nesting depth, walked without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, level)
            if level > MAX_DEPTH:
                return level
            stack.extend((child, level + 1) for child in item)
    return deepest


def loads(text: str | bytes, field: str = "body") -> Any:
    """Parse `text` strictly; InvalidRequestError (422) naming `field` and the problem otherwise."""
    try:
        value = json.loads(text, parse_constant=_constant, parse_float=_float, parse_int=_int)
    except InvalidRequestError as exc:
        raise InvalidRequestError(f"'{field}': {exc}") from exc
    except RecursionError as exc:
        raise InvalidRequestError(f"'{field}' is nested too deeply; at most {MAX_DEPTH} levels") from exc
    except json.JSONDecodeError as exc:
        snippet = text[:80] if isinstance(text, str) else text[:80].decode("utf-8", "replace")
        raise InvalidRequestError(
            f"'{field}' is not valid JSON ({exc.msg} at position {exc.pos}): {snippet!r}"
        ) from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"'{field}' is not valid JSON: {exc}") from exc
    if _depth(value) > MAX_DEPTH:
        raise InvalidRequestError(f"'{field}' is nested too deeply; at most {MAX_DEPTH} levels")
    return value
