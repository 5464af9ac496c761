"""Input validation: pure functions, no database."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

import pytest

from pgqueue import InvalidJobError
from pgqueue._input import dump_data, enqueue_params
from pgqueue.retry import normalize_retry
from pgqueue.schedule import normalize_interval


@pytest.mark.parametrize(
    ("interval", "message"),
    [
        ({}, "at least one positive"),
        ({"hours": 0}, "at least one positive"),
        ({"fortnights": 1}, "unknown interval key 'fortnights'"),
        ({"hours": -1}, "must not be negative"),
        ({"hours": 1.5}, "whole number"),
        ({"hours": "1"}, "must be a number"),
        ({"hours": True}, "must be a number"),
        ({"seconds": math.inf}, "must not be negative"),
        ({"days": 10**7}, "at most"),
        ("1 hour", "must be a mapping"),
        (timedelta(0), "positive"),
    ],
)
def test_bad_intervals_are_refused(interval, message):
    with pytest.raises(InvalidJobError, match=message):
        normalize_interval(interval)


def test_intervals_are_normalised():
    assert normalize_interval({"hours": 1, "minutes": 5}) == {"hours": 1, "minutes": 5}
    assert normalize_interval({"seconds": 0.5}) == {"seconds": 0.5}
    assert normalize_interval({"months": 2.0}) == {"months": 2}
    assert normalize_interval(timedelta(days=1, seconds=30)) == {"days": 1, "seconds": 30.0}


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"backoff": "quadratic"}, "backoff must be one of"),
        ({"delay": -1}, "between"),
        ({"delay": "10"}, "must be a number"),
        ({"jitter": math.nan}, "between"),
        ({"retries": 3}, "unknown retry key 'retries'"),
        ({"until": datetime(2030, 1, 1)}, "timezone-aware"),
        ([("delay", 1)], "must be a mapping"),
    ],
)
def test_bad_retry_policies_are_refused(policy, message):
    with pytest.raises(InvalidJobError, match=message):
        normalize_retry(policy)


def test_retry_policy_is_stored_as_json():
    until = datetime(2030, 1, 1, tzinfo=UTC)
    policy = normalize_retry({"backoff": "fixed", "delay": 2, "until": until})
    assert policy == {"backoff": "fixed", "delay": 2, "until": until.isoformat()}
    assert json.loads(json.dumps(policy)) == policy
    assert normalize_retry(None) is None
    assert normalize_retry({}) is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"x": object()}, r"data\['x'\] is a object"),
        ({"x": {1, 2}}, "is a set"),
        ({"x": math.nan}, "JSON cannot represent"),
        ([math.inf], "JSON cannot represent"),
        ({"x": "a\x00b"}, "NUL"),
        ({"a\x00": 1}, "NUL"),
        ({1: "a"}, "non-string key"),
        ({"x": "\ud800"}, "not valid Unicode"),
        (b"bytes", "is a bytes"),
    ],
)
def test_bad_data_is_refused(data, message):
    with pytest.raises(InvalidJobError, match=message) as caught:
        dump_data(data)
    # The error names the value; no encoder error shows as "during handling of the above".
    assert caught.value.__context__ is None or caught.value.__suppress_context__


def test_deep_nesting_is_refused_cleanly():
    data: list[object] = []
    for _ in range(100_000):
        data = [data]
    with pytest.raises(InvalidJobError, match="nested too deeply"):
        dump_data(data)


def test_escaped_backslash_before_u0000_is_not_a_nul():
    text = dump_data({"path": "C:\\u0000"})
    assert json.loads(text) == {"path": "C:\\u0000"}


@pytest.mark.parametrize(
    ("job", "message"),
    [
        ({"priority": "urgent"}, "unknown priority name .urgent."),
        ({"priority": True}, "priority must be an integer"),
        ({"priority": 2**31}, "between"),
        ({"max_attempts": 0}, "between 1"),
        ({"name": 5}, "name must be a string"),
        ({"queue": "a\x00"}, "NUL"),
        ({"scheduled_at": datetime(2030, 1, 1)}, "timezone-aware"),
        ({"scheduled_at": "2030-01-01"}, "datetime or a timedelta"),
        ({"nmae": "typo"}, "unknown job key"),
    ],
)
def test_bad_jobs_are_refused(job, message):
    with pytest.raises(InvalidJobError, match=message):
        enqueue_params(job, {})


def test_keywords_override_the_job_dict():
    params = enqueue_params({"name": "a", "priority": 3}, {"priority": 7})
    assert params.name == "a"
    assert params.priority == 7


def test_a_list_job_is_refused():
    with pytest.raises(InvalidJobError, match="job must be a dict"):
        enqueue_params(["a"], {})  # type: ignore[arg-type]


def test_builtin_job_names_are_reserved():
    with pytest.raises(InvalidJobError, match="reserved for pgqueue"):
        enqueue_params({"name": "pgqueue.recurring"}, {})
    assert enqueue_params({"name": "pgqueue_recurring"}, {}).name == "pgqueue_recurring"
