"""The hot endpoints' query parsing (ranking.serializers.recommendation_query / count_query): the plain-Python check
returns exactly what the serializer returns, answers the everyday queries without it, and leaves every other query
to it (so a bad one gets the serializer's own field-named 400)."""

from __future__ import annotations

from typing import Any

import pytest
from django.http import QueryDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rest_framework.exceptions import ValidationError

from ranking.serializers import (
    CountQuerySerializer,
    RecommendationQuerySerializer,
    _fast_count,
    _fast_recommendation_query,
    count_query,
    recommendation_query,
)

FIELDS = (
    "count", "customer_id", "session_id", "surface", "category", "exclude", "context_item_id", "context_category",
    "exclude_request_ids", "debug", "unknown",
)  # fmt: skip

# Characters where the rules have edges: whitespace to trim, separators, NUL, a surrogate, invisible and non-ASCII
# letters and digits, the decimal point DRF's IntegerField tolerates.
_CHARS = st.sampled_from(list("aZ09-_., \t\n\x00\u200b\ud800é٣x/"))
_LITERALS = st.sampled_from(
    [
        "", " ", "true", "false", "True", "TRUE", "1", "0", "yes", "no", "on", "null", "maybe", "10", "100", "101",
        "-1", "5.0", "010", " 5", "5 ", "1_0", "abc", "home", "home page", "x" * 32, "x" * 33, "x" * 100, "x" * 101,
        ",".join(["a"] * 100), ",".join(["a"] * 101), ",".join(["r"] * 21), "a,,b, c", "a" * 64 + ",b", "a" * 65,
        # The id rule's "/" segments: a dot segment, a sub-resource's name last, and ids it keeps.
        ".", "..", "a/./b", "x/export", "sku/similar", "a/b", "...", "export",
    ]
)  # fmt: skip
_VALUES = st.one_of(_LITERALS, st.text(_CHARS, max_size=12))


def _query(values: dict[str, list[str]]) -> QueryDict:
    query = QueryDict(mutable=True)
    for name, given_values in values.items():
        query.setlist(name, given_values)
    return query


def _serializer_answer(serializer_class: type, query: QueryDict) -> tuple[bool, Any]:
    serializer = serializer_class(data=query)
    if serializer.is_valid():
        return True, dict(serializer.validated_data)
    return False, serializer.errors


# Queries of one or two fields try each field's edges alone (the others absent, so plainly valid); larger ones mix.
_QUERIES = st.one_of(
    st.dictionaries(st.sampled_from(FIELDS), st.lists(_VALUES, min_size=1, max_size=1), max_size=2),
    st.dictionaries(st.sampled_from(FIELDS), st.lists(_VALUES, min_size=1, max_size=2), max_size=len(FIELDS)),
)


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(_QUERIES)
def test_the_fast_check_agrees_with_the_serializer(values: dict[str, list[str]]) -> None:
    query = _query(values)
    valid, answer = _serializer_answer(RecommendationQuerySerializer, query)
    fast = _fast_recommendation_query(query)
    if fast is not None:
        assert valid
        assert fast == answer
    if valid:
        assert recommendation_query(query) == answer
    else:
        with pytest.raises(ValidationError) as raised:
            recommendation_query(query)
        assert raised.value.detail == answer  # the serializer's own field-named errors

    valid, answer = _serializer_answer(CountQuerySerializer, query)
    count = _fast_count(query)
    if count is not None:
        assert valid
        assert count == answer["count"]
    if valid:
        assert count_query(query) == answer["count"]
    else:
        with pytest.raises(ValidationError) as raised:
            count_query(query)
        assert raised.value.detail == answer


@pytest.mark.parametrize(
    "query_string",
    [
        "",
        "customer_id=c-17&count=10",
        "customer_id=c-17&count=50&exclude=item-1,item-2",
        "session_id=s-9&surface=product_page&context_item_id=mug-1&context_category=kitchen&category=mugs",
        "customer_id=c-1&session_id=s-1&exclude_request_ids=0f3a,9b2c&debug=false",
    ],
)
def test_everyday_queries_skip_the_serializer(query_string: str) -> None:
    query = QueryDict(query_string)
    fast = _fast_recommendation_query(query)
    assert fast is not None
    valid, answer = _serializer_answer(RecommendationQuerySerializer, query)
    assert valid
    assert fast == answer


def test_a_bad_query_gets_the_serializers_field_named_errors() -> None:
    with pytest.raises(ValidationError) as raised:
        recommendation_query(QueryDict("count=0&surface=not a slug&customer_id=%00"))
    assert set(raised.value.detail) == {"count", "surface", "customer_id"}
