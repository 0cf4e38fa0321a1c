"""The API's JSON parser: the request size limit applied, and text that is not text refused.

DRF reads the body from the stream itself, which bypasses Django's ``DATA_UPLOAD_MAX_MEMORY_SIZE``, so a large
body would otherwise be parsed whole. JSON may also escape half of a UTF-16 surrogate pair (``"\\ud800"``): valid
JSON, but no character, and nothing downstream (hashing, Postgres) can encode it.
"""

from __future__ import annotations

import io
import json
import re
from typing import IO, Any

from django.conf import settings
from rest_framework import status
from rest_framework.exceptions import APIException, ParseError
from rest_framework.parsers import JSONParser

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


class RequestTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "request_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(f"The request body is larger than {limit:,} bytes.")


class BoundedJSONParser(JSONParser):
    """JSON bodies of at most ``DATA_UPLOAD_MAX_MEMORY_SIZE`` bytes (a larger one is answered 413 unread), whose
    strings are all valid Unicode (a lone surrogate is a parse error, 400)."""

    def parse(self, stream: IO[bytes], media_type: str | None = None, parser_context: Any = None) -> Any:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        if limit is None:
            raw = stream.read()
        else:
            request = (parser_context or {}).get("request")
            declared = request.META.get("CONTENT_LENGTH") if request is not None else None
            if declared and declared.isdigit() and int(declared) > limit:
                raise RequestTooLarge(limit)
            # A body without a (true) length is read up to one byte past the limit, never further.
            raw = stream.read(limit + 1)
            if len(raw) > limit:
                raise RequestTooLarge(limit)
        data = super().parse(io.BytesIO(raw), media_type, parser_context)
        # Surrogate escapes are rare (emoji escaped as pairs are fine): only then is the parsed value checked.
        if _SURROGATE_ESCAPE.search(raw):
            try:
                json.dumps(data, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError:
                raise ParseError("A string holds a lone surrogate (an escape in \\ud800-\\udfff).") from None
        return data
