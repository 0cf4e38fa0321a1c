"""Query serializers reuse their fields per thread: results and errors still belong to each instance."""

from __future__ import annotations

import threading

from django.http import QueryDict
from rest_framework import serializers

from kernel.query_serializers import QuerySerializer


class _Query(QuerySerializer):
    count = serializers.IntegerField(min_value=1, max_value=100, default=10)
    ids = serializers.CharField(required=False, default="")

    def validate_ids(self, value: str) -> list[str]:
        return [part for part in value.split(",") if part]


def test_fields_are_built_once_per_thread_and_validate_each_instance_on_its_own() -> None:
    first = _Query(data=QueryDict("count=0&ids=a,b"))
    assert not first.is_valid()
    second = _Query(data=QueryDict("count=7&ids=c"))
    assert second.is_valid(), second.errors
    assert first.fields is second.fields  # reused, not deep-copied again
    assert first.errors == {"count": ["Ensure this value is greater than or equal to 1."]}
    assert second.validated_data == {"count": 7, "ids": ["c"]}
    assert _Query(data=QueryDict("")).is_valid()


def test_threads_get_their_own_fields() -> None:
    results: dict[int, tuple[object, object]] = {}
    start = threading.Barrier(8)

    def validate(n: int) -> None:
        start.wait()
        for _ in range(200):
            query = _Query(data=QueryDict(f"count={n + 1}&ids=x{n}"))
            assert query.is_valid(), query.errors
            assert query.validated_data == {"count": n + 1, "ids": [f"x{n}"]}
        results[n] = (query.fields, query.validated_data)

    threads = [threading.Thread(target=validate, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8
    assert len({id(fields) for fields, _ in results.values()}) == 8
