"""The input rules every entry point shares (shared kernel: imports no app of ours).

**Ids** (customer, item, session, category, brand, event ids; in a path, a body, a query or a CSV file): 1 to 100
characters, every one printable (no control characters, no ANSI escapes, no NUL, no line or paragraph separators,
no invisible format characters such as U+200B or U+202E, except the zero-width joiner and non-joiner inside
an id, which words of some scripts and emoji sequences need), no whitespace at either end, and no last ``/``-segment
that names one of the API's sub-resources (``acme/export``, ``sku/similar``: a path ending in one reads as that
sub-resource of the shorter id, :data:`SUBRESOURCE_NAMES`), and no ``/``-segment ``.`` or ``..`` (``.``, ``a/../b``:
HTTP clients resolve them out of a path before it is sent). :func:`id_problem`
is the rule; :func:`check_id` applies it to a path id, :class:`IdField` to a body field (which must be a JSON string: a
number is not an id) and :func:`optional_id` to a query-string id. Body fields and CSV cells are stripped of
surrounding whitespace first (the events API, ``IdField(strip=True)``, both imports); a path id is not (the path
is the resource), so whitespace at its ends is refused.

**JSON types in request bodies**: a number field takes only a JSON number (not ``"5"``, not ``true``), a string
field only a JSON string (not ``5``), a true/false field only ``true`` or ``false`` (not ``"yes"``, not ``1``), where
DRF's fields would coerce them. :class:`BodySerializer` applies the rule to every field it declares (nested body
serializers and list elements too; :func:`json_type_problem` is the rule); every serializer of an API request body
derives from it. Query strings are text by nature and keep DRF's parsing (``?count=5``).

**Stored JSON** (item and customer ``attributes``): an object nested at most :data:`ATTRIBUTES_MAX_DEPTH` deep,
at most :data:`ATTRIBUTES_MAX_BYTES` as JSON, string keys, integers within the signed 64-bit range, finite floats,
and no NUL in any string (Postgres' ``jsonb`` cannot hold one). :func:`json_problem` is the rule; what is already
stored is rendered through :func:`render_safe_json`, which never fails whatever an old row holds.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Mapping
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.fields import empty

ID_MAX_LENGTH = 100
# Zero-width (non-)joiners are part of the words of some scripts (Persian, Indic) and of emoji sequences: the one
# kind of invisible format character an id may hold (never at an end, where it would be whitespace-like).
_JOINERS = frozenset("\u200c\u200d")

ATTRIBUTES_MAX_DEPTH = 16
ATTRIBUTES_MAX_BYTES = 1024 * 1024
# The names that follow an id in the API's paths (``customers/<id>/export``, ``items/<id>/similar``, ...). An id may
# hold "/" (kernel.urls), so an id whose last segment is one of these would route to that sub-resource of the id
# before it: ``GET /v1/customers/acme%2Fexport`` would answer acme's export. Such ids are refused everywhere (an id
# stored through one entry point is read through another); tests/reliability/test_hardening_input.py checks every route
# with a suffix after an id is listed here.
SUBRESOURCE_NAMES = frozenset(
    {"export", "opt-out", "opt-in", "because-you-viewed", "similar", "bought-together", "merge"}
)
# HTTP clients (curl, requests, browsers) resolve these path segments before sending (RFC 3986, 5.2.4), encoded or
# not: GET /v1/customers/./export reached /v1/customers/export, another customer (an eleventh tester, 6 December).
DOT_SEGMENTS = frozenset({".", ".."})
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
# Rendering what is stored: deeper than this is cut (None), far below the JSON renderer's own limit (254).
RENDER_MAX_DEPTH = 64


def id_problem(value: object) -> str | None:
    """Why ``value`` is not a valid id (a sentence fragment, e.g. ``"longer than 100 characters"``), or None."""
    if not isinstance(value, str):
        return "must be a string"
    if not value:
        return "may not be blank"
    if len(value) > ID_MAX_LENGTH:
        return f"longer than {ID_MAX_LENGTH} characters"
    if not value.isprintable():
        if "\x00" in value:
            return "null characters are not allowed"
        bad = next((c for c in value if not c.isprintable() and c not in _JOINERS), None)
        if bad is not None:
            name = unicodedata.name(bad, "a control character")
            position = value.index(bad) + 1
            return f"contains U+{ord(bad):04X} ({name}) at position {position}: no control or invisible characters"
    if value[0].isspace() or value[-1].isspace():
        return "starts or ends with whitespace" if value.strip() else "may not be blank"
    if value[0] in _JOINERS or value[-1] in _JOINERS:
        return "starts or ends with an invisible joiner"
    if "/" in value and (last := value.rsplit("/", 1)[1]) in SUBRESOURCE_NAMES:
        return f'ends in "/{last}", which the API reads as a sub-resource of the id before it'
    if any(segment in DOT_SEGMENTS for segment in value.split("/")):
        return 'has a "." or ".." segment, which HTTP clients remove from a path before sending it'
    return None


def sentence(fragment: str) -> str:
    return fragment[:1].upper() + fragment[1:] + "."


# Control characters (C0, DEL, C1): an ANSI escape starts with one, and they reach logs, terminals and pages.
# A title is one line: no line or paragraph separators, and no bidi embeddings or overrides (U+202A-U+202E, which
# can make a title read as something else; the direction marks and isolates that right-to-left text uses are kept).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e]")
_CONTROL_BUT_LINES = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def text_problem(value: str, *, multiline: bool = False) -> str | None:
    """Why ``value`` cannot be stored as display text (a title; a description when ``multiline``, which may hold
    tabs and line breaks), or None: no control characters. Letters of every script, and their direction marks,
    are text."""
    found = (_CONTROL_BUT_LINES if multiline else _CONTROL).search(value)
    if found is None:
        return None
    return "null characters are not allowed" if found.group() == "\x00" else "contains control characters"


def check_text(value: str, *, multiline: bool = False) -> str:
    """``value`` when it is display text (:func:`text_problem`), else Django's ValidationError with the sentence:
    a serializer's ``validate_<field>`` and a form's ``clean_<field>`` both report it under the field."""
    problem = text_problem(value, multiline=multiline)
    if problem is not None:
        raise DjangoValidationError(sentence(problem))
    return value


def check_id(value: str, field: str) -> str:
    """A path id: itself when valid, else a 400 naming ``field``."""
    problem = id_problem(value)
    if problem is not None:
        raise ValidationError({field: [sentence(problem)]})
    return value


def optional_id(value: str) -> str:
    """A query-string id that may be absent (``""``): under :func:`id_problem` when given (for ``validate_<field>``
    methods of query serializers, whose fields are shared and plain)."""
    if value:
        problem = id_problem(value)
        if problem is not None:
            raise ValidationError(sentence(problem))
    return value


class IdField(serializers.CharField):
    """A body field holding an id: a JSON string (a number or a boolean is refused) under :func:`id_problem`;
    ``strip=True`` strips surrounding whitespace first, as the events API does with its ids."""

    def __init__(self, *, strip: bool = False, **kwargs: Any) -> None:
        kwargs.setdefault("max_length", ID_MAX_LENGTH)
        kwargs["trim_whitespace"] = False
        super().__init__(**kwargs)
        self.strip = strip

    def to_internal_value(self, data: Any) -> str:
        if self.strip and isinstance(data, str):
            data = data.strip()
            if not data and self.allow_blank:  # only whitespace: as blank, none
                return ""
        problem = id_problem(data)
        if problem is not None:
            raise ValidationError(sentence(problem))
        return data


# --- JSON types in request bodies --------------------------------------------------------------------------

_TEXT_FIELDS = (serializers.CharField, serializers.DateTimeField, serializers.DateField, serializers.TimeField)


def _json_kind(field: serializers.Field) -> str | None:
    """The JSON type a body field takes ("number", "string", "boolean"), or None when DRF's field already refuses
    every other type (lists, objects) or takes several on purpose (a decimal: a JSON number or the decimal string
    the API itself writes, as an item's ``price``)."""
    if isinstance(field, serializers.BooleanField):
        return "boolean"
    if isinstance(field, serializers.IntegerField | serializers.FloatField):
        return "number"
    if isinstance(field, _TEXT_FIELDS):
        return "string"
    if isinstance(field, serializers.ChoiceField) and not isinstance(field, serializers.MultipleChoiceField):
        return "string" if all(isinstance(choice, str) for choice in field.choices) else None
    return None


def json_type_problem(kind: str, value: object) -> str | None:
    """Why ``value`` (parsed JSON, not null) is not of the JSON type ``kind`` ("number", "string", "boolean"), as a
    sentence fragment, or None."""
    if kind == "number":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return None if ok else "must be a number"
    if kind == "string":
        return None if isinstance(value, str) else "must be a string"
    if kind == "boolean":
        return None if isinstance(value, bool) else "must be true or false"
    raise ValueError(f"unknown JSON type {kind!r}")


def _type_errors(field: serializers.Field, value: Any) -> Any:
    """The errors of ``value`` against ``field``'s JSON type, in DRF's shape (a list of messages; for a list or
    object field, its elements' errors by index or key), or None. Null is left to the field (``allow_null``)."""
    if value is None or value is empty:
        return None
    kind = _json_kind(field)
    if kind is not None:
        problem = json_type_problem(kind, value)
        return [sentence(problem)] if problem is not None else None
    if isinstance(field, serializers.ListField) and isinstance(value, list):
        items = {i: e for i, item in enumerate(value) if (e := _type_errors(field.child, item)) is not None}
        return items or None
    if isinstance(field, serializers.DictField) and isinstance(value, dict):
        entries = {k: e for k, item in value.items() if (e := _type_errors(field.child, item)) is not None}
        return entries or None
    return None


class BodySerializer(serializers.Serializer):
    """The base of every API request body's serializer: each declared field takes only its JSON type (numbers,
    strings, true/false: :func:`json_type_problem`), where DRF's fields would coerce ``"5"`` to 5 or ``5`` to
    ``"5"``. A mistyped field is a 400 naming it, beside every other field's error (all reported at once)."""

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return super().to_internal_value(data)  # DRF's own error for a body that is not an object
        mistyped: dict[str, Any] = {}
        for field in self._writable_fields:
            errors = _type_errors(field, field.get_value(data))
            if errors is not None and field.field_name is not None:
                mistyped[field.field_name] = errors
        try:
            validated = super().to_internal_value(data)
        except ValidationError as exc:
            if not mistyped:
                raise
            merged = dict(exc.detail) if isinstance(exc.detail, dict) else {}
            for name, errors in mistyped.items():  # a list's other elements keep their own errors
                before = merged.get(name)
                merged[name] = {**before, **errors} if isinstance(before, dict) and isinstance(errors, dict) else errors
            raise ValidationError(merged) from None
        if mistyped:
            raise ValidationError(mistyped)
        return validated


# --- Stored JSON --------------------------------------------------------------------------------------------


def json_problem(value: object, *, max_depth: int = ATTRIBUTES_MAX_DEPTH) -> str | None:
    """Why ``value`` (parsed JSON) cannot be stored as attributes, or None. Iterative: no recursion limit to hit."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            if depth > max_depth:
                return f"nested deeper than {max_depth} levels"
            for key, child in node.items():
                if not isinstance(key, str):
                    return "keys must be strings"
                if "\x00" in key:
                    return "a key contains a NUL character"
                stack.append((child, depth + 1))
        elif isinstance(node, list):
            if depth > max_depth:
                return f"nested deeper than {max_depth} levels"
            stack.extend((child, depth + 1) for child in node)
        elif isinstance(node, bool) or node is None:
            continue
        elif isinstance(node, int):
            if not INT64_MIN <= node <= INT64_MAX:
                return "an integer is outside the 64-bit range (send it as a string)"
        elif isinstance(node, float):
            if not math.isfinite(node):
                return "a number is not finite"
            if not INT64_MIN <= node <= INT64_MAX:  # jsonb would give it back as a 20-digit integer
                return "a number is outside the 64-bit range (send it as a string)"
        elif isinstance(node, str):
            if "\x00" in node:
                return "a string contains a NUL character"
        else:
            return f"holds a value JSON cannot represent ({type(node).__name__})"
    try:
        size = len(json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8", "surrogatepass"))
    except (TypeError, ValueError):
        return "is not representable as JSON"
    if size > ATTRIBUTES_MAX_BYTES:
        return f"larger than {ATTRIBUTES_MAX_BYTES:,} bytes as JSON"
    return None


class AttributesField(serializers.DictField):
    """A JSON object stored as is (``attributes``), under :func:`json_problem`."""

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        value = super().to_internal_value(data)
        problem = json_problem(value)
        if problem is not None:
            raise ValidationError(sentence(problem))
        return value

    def to_representation(self, value: Any) -> Any:
        return render_safe_json(value)


def render_safe_json(value: Any, _depth: int = 1) -> Any:
    """What is stored, made renderable whatever it holds (rows stored before the write rules, or by other means):
    integers outside 64 bits become strings, non-finite floats and anything deeper than :data:`RENDER_MAX_DEPTH`
    become None, non-string keys become strings. Plain values pass through untouched (the common case costs a type
    check per node)."""
    if isinstance(value, str) or value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if INT64_MIN <= value <= INT64_MAX else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if _depth > RENDER_MAX_DEPTH:
        return None
    if isinstance(value, dict):
        return {str(key): render_safe_json(child, _depth + 1) for key, child in value.items()}
    if isinstance(value, list | tuple):
        return [render_safe_json(child, _depth + 1) for child in value]
    return str(value)
