"""The API's one JSON parser: the size limit applied, nesting bounded, numbers finite, text that is not text
refused.

DRF reads the body from the stream itself, which bypasses Django's ``DATA_UPLOAD_MAX_MEMORY_SIZE``, so a large
body would otherwise be parsed whole. Python's ``json`` recurses once per nesting level: a 2 KB body nested 1,000
deep raised ``RecursionError`` (a 500), and a few hundred levels parsed but could not be rendered back. So the
nesting is measured on the raw bytes before parsing (:func:`json_depth`: numpy over the quotes and brackets, about
half a millisecond for a 1,000-event batch) and anything deeper than :data:`MAX_JSON_DEPTH` is a 400. ``1e999``
parses as an infinite float in Python: refused as well, as are ``NaN``/``Infinity``. JSON may also escape half of
a UTF-16 surrogate pair (``"\\ud800"``): valid JSON, but no character, and nothing downstream (hashing, Postgres)
can encode it.
"""

from __future__ import annotations

import json
import math
import re
from typing import IO, Any

import numpy as np
from django.conf import settings
from rest_framework import status
from rest_framework.exceptions import APIException, ParseError
from rest_framework.parsers import JSONParser

# Deep enough for any body of this API (an event batch is 3 levels, item attributes at most 16 inside a body).
MAX_JSON_DEPTH = 32

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_QUOTE, _BACKSLASH = ord('"'), ord("\\")
_STRUCTURAL = np.zeros(256, dtype=bool)
_STRUCTURAL[list(b'[]{}"')] = True
_BRACKET_STEP = np.zeros(256, dtype=np.int8)
_BRACKET_STEP[list(b"[{")] = 1
_BRACKET_STEP[list(b"]}")] = -1


class RequestTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "request_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(f"The request body is larger than {limit:,} bytes.")


class UnsupportedContentEncoding(APIException):
    status_code = status.HTTP_415_UNSUPPORTED_MEDIA_TYPE
    default_code = "unsupported_content_encoding"

    def __init__(self, coding: str) -> None:
        super().__init__(f"Content-Encoding {coding[:40]!r} is not accepted: send the body uncompressed.")


def json_depth(raw: bytes) -> int:
    """The deepest nesting of arrays and objects in the JSON text ``raw`` (0 for a scalar). Brackets inside strings
    do not count. Vectorised over the bytes that matter (quotes and brackets): a byte is inside a string when an odd
    number of unescaped quotes precede it, and a quote is escaped when an odd run of backslashes precedes it (only
    computed when the body holds a backslash at all)."""
    data = np.frombuffer(raw, dtype=np.uint8)
    where = np.flatnonzero(_STRUCTURAL[data])
    kinds = data[where]
    quote = kinds == _QUOTE
    if b"\\" in raw:
        backslash = data == _BACKSLASH
        position = np.arange(data.size)
        # For each byte, the position of the last byte at or before it that is not a backslash.
        last_plain = np.maximum.accumulate(np.where(backslash, -1, position))
        before = np.maximum(where - 1, 0)
        run = np.where(where > 0, before - last_plain[before], 0)
        quote &= run % 2 == 0
    # An opening quote counts as inside its string, the closing one as outside: neither is a bracket anyway.
    outside = (np.cumsum(quote, dtype=np.int64) & 1) == 0
    steps = np.where(outside, _BRACKET_STEP[kinds], 0)
    return int(np.cumsum(steps, dtype=np.int64).max(initial=0))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


class BoundedJSONParser(JSONParser):
    """JSON bodies of at most ``DATA_UPLOAD_MAX_MEMORY_SIZE`` bytes (a larger one is answered 413 unread), nested at
    most :data:`MAX_JSON_DEPTH` deep, whose numbers are finite and whose strings are all valid Unicode; anything
    else is a ``400 {"detail": "JSON parse error - …"}``. A compressed body (``Content-Encoding: gzip``) is a 415
    saying so."""

    def parse(self, stream: IO[bytes], media_type: str | None = None, parser_context: Any = None) -> Any:
        request = (parser_context or {}).get("request")
        # A compressed body was read as text: "'utf-8' codec can't decode byte 0x8b", naming nothing (RFC 7694: 415).
        coding = request.META.get("HTTP_CONTENT_ENCODING", "").strip() if request is not None else ""
        if coding and coding.lower() != "identity":
            raise UnsupportedContentEncoding(coding)
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        if limit is None:
            raw = stream.read()
        else:
            declared = request.META.get("CONTENT_LENGTH") if request is not None else None
            if declared and declared.isdigit() and int(declared) > limit:
                raise RequestTooLarge(limit)
            # A body without a (true) length is read up to one byte past the limit, never further.
            raw = stream.read(limit + 1)
            if len(raw) > limit:
                raise RequestTooLarge(limit)
        if (depth := _too_deep(raw)) is not None:
            raise ParseError(f"JSON parse error - the body is nested {depth} levels deep; at most {MAX_JSON_DEPTH}.")
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        try:
            data = _strict_loads(raw.decode(encoding))
        except (ValueError, LookupError, RecursionError) as exc:  # UnicodeDecodeError, JSONDecodeError: ValueErrors
            raise ParseError(f"JSON parse error - {exc}") from None
        # Surrogate escapes are rare (emoji escaped as pairs are fine): only then is the parsed value checked.
        if _SURROGATE_ESCAPE.search(raw) and _holds_lone_surrogate(data):
            raise ParseError("A string holds a lone surrogate (an escape in \\ud800-\\udfff).")
        return data


def _too_deep(raw: bytes) -> int | None:
    """The nesting depth of the JSON text ``raw`` when deeper than :data:`MAX_JSON_DEPTH` (measured before parsing:
    Python's parser recurses), else None. Counting the brackets bounds the depth and is nearly free: only a text
    with many is measured."""
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and (depth := json_depth(raw)) > MAX_JSON_DEPTH:
        return depth
    return None


def _strict_loads(text: str) -> Any:
    """``json.loads`` refusing NaN and infinities (a ``ValueError`` naming them)."""
    return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)


def _holds_lone_surrogate(value: Any) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def json_text_loads(text: str) -> Any:
    """JSON typed into a form (the admin's settings and attributes) or an option under the body's rules
    (:class:`BoundedJSONParser`): nested at most :data:`MAX_JSON_DEPTH` deep, finite numbers, no lone surrogate. A
    ``ValueError`` says what is wrong."""
    if (depth := _too_deep(text.encode("utf-8", "surrogatepass"))) is not None:
        raise ValueError(f"nested {depth} levels deep; at most {MAX_JSON_DEPTH}")
    try:
        value = _strict_loads(text)
    except RecursionError:  # not reached within the depth above; the parser's own limit, never a 500
        raise ValueError("nested too deep") from None
    if _holds_lone_surrogate(value):
        raise ValueError("a string holds a lone surrogate (an escape in \\ud800-\\udfff)")
    return value
