"""Property-based tests (hypothesis) of input validation and schedule parsing: no database.

Every call either succeeds with a value that obeys the rules or raises a pgqueue error
(PgQueueError); any other exception fails the test. Where the rule is simple, an independent
oracle says which inputs must be accepted, so validation is neither too lax nor too strict.
"""

from __future__ import annotations

import functools
import json
import math
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import pgqueue
from pgqueue import ConfigurationError, InvalidJobError, PgQueueError
from pgqueue._input import (
    MAX_DATA_DEPTH,
    MAX_NAME_BYTES,
    MAX_PAYLOAD_BYTES,
    MAX_PAYLOAD_ENV,
    check_job_name,
    check_text,
    dump_data,
    enqueue_params,
    max_payload_bytes,
)
from pgqueue.priority import PRIORITY_NAMES, to_priority
from pgqueue.retry import gadget_retry, normalize_retry, reaction_retry
from pgqueue.schedule import INTERVAL_KEYS, Schedule, normalize_interval, parse_schedule

# Deterministic in CI: the same examples on every run, nothing remembered between runs.
PURE = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- strategies ---------------------------------------------------------------------------

#: Characters that break naive code: NUL, lone surrogates, quotes, SQL and JSON syntax,
#: backslashes (also the six characters of a JSON "\u0000" escape), controls, non-BMP.
HOSTILE_CHARS = st.one_of(
    st.characters(),
    st.sampled_from(
        ["\x00", "\ud800", "\udfff", "'", '"', ";", "-", "\\", "\n", "\x1c", "\u2028", "😀"]
    ),
)
hostile_text = st.one_of(
    st.text(HOSTILE_CHARS, max_size=30),
    st.sampled_from(
        ["", "'; DROP TABLE pgqueue.jobs; --", "\\u0000", "\\\\u0000", "a\x00b", "\ud83d", "%s"]
    ),
)
#: Valid Unicode without NUL: what a name may hold.
clean_text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"))

#: Scalars JSON can hold, and some it cannot (NaN, Infinity, huge ints).
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    # Around the 4300 digits Python will print (hypothesis cannot draw such ints itself).
    st.builds(
        lambda digits, sign: sign * 10**digits, st.integers(15, 4400), st.sampled_from([1, -1])
    ),
    st.floats(),
    hostile_text,
)
#: Values JSON cannot hold at all.
not_json = st.one_of(
    st.binary(max_size=5),
    st.sets(st.integers(), max_size=3),
    st.frozensets(st.integers(), max_size=3),
    st.builds(object),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.complex_numbers(),
    st.datetimes(),
)
dict_keys = st.one_of(
    hostile_text,
    st.integers(),
    st.none(),
    st.floats(),
    st.booleans(),
    st.tuples(st.integers()),
)


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


#: Job data: anything, mostly JSON-shaped, with tuples, non-string keys, deep nesting.
json_data = st.one_of(
    st.recursive(
        st.one_of(json_scalars, not_json),
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.lists(children, max_size=4).map(tuple),
            st.dictionaries(hostile_text, children, max_size=4),
            st.dictionaries(dict_keys, children, max_size=3),
        ),
        max_leaves=12,
    ),
    st.integers(1, 3 * MAX_DATA_DEPTH).map(nested),
)


def garbage() -> st.SearchStrategy[Any]:
    """Anything at all a caller might pass by mistake."""
    return st.one_of(
        json_scalars,
        not_json,
        st.lists(st.integers(), max_size=3),
        st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
        st.timedeltas(),
        st.datetimes(timezones=st.none() | st.timezones()),
    )


# -- oracles ------------------------------------------------------------------------------


def storable_text(value: str) -> bool:
    return "\x00" not in value and not any(0xD800 <= ord(c) <= 0xDFFF for c in value)


def storable_json(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` is job data pgqueue must accept (size aside): what jsonb can hold."""
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, int):
        # Python refuses to print an int of more digits than this (and so does json.dumps).
        limit = sys.get_int_max_str_digits()
        return limit == 0 or abs(value) < 10**limit
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, (list, tuple, dict)) and depth >= MAX_DATA_DEPTH:
        return False
    if isinstance(value, (list, tuple)):
        return all(storable_json(item, depth + 1) for item in value)
    if isinstance(value, dict):
        return all(
            isinstance(key, str) and storable_text(key) and storable_json(item, depth + 1)
            for key, item in value.items()
        )
    return False


def as_json(value: Any) -> Any:
    """What JSON makes of accepted data: tuples become lists."""
    if isinstance(value, (list, tuple)):
        return [as_json(item) for item in value]
    if isinstance(value, dict):
        return {key: as_json(item) for key, item in value.items()}
    return value


def must_not_crash(call: Callable[[], Any]) -> tuple[Any, PgQueueError | None]:
    """Run ``call``: (result, None), or (None, the pgqueue error). Anything else propagates."""
    try:
        return call(), None
    except PgQueueError as exc:
        error = exc
    assert str(error), "a pgqueue error must say what is wrong"
    return None, error


# -- job data -----------------------------------------------------------------------------


@PURE
@given(data=json_data)
def test_dump_data_accepts_exactly_what_jsonb_can_store(data: Any) -> None:
    text, error = must_not_crash(lambda: dump_data(data))
    assert (error is None) == storable_json(data), error
    if error is None:
        assert json.loads(text) == as_json(data)
        assert len(text.encode("utf-8")) <= MAX_PAYLOAD_BYTES
    else:
        assert isinstance(error, InvalidJobError)


@PURE
@given(depth=st.integers(1, MAX_DATA_DEPTH + 50), kind=st.sampled_from(["list", "dict"]))
def test_nesting_is_refused_above_the_limit_only(depth: int, kind: str) -> None:
    value: Any = 1
    for _ in range(depth):
        value = [value] if kind == "list" else {"k": value}
    _, error = must_not_crash(lambda: dump_data(value))
    assert (error is None) == (depth <= MAX_DATA_DEPTH)
    if error is not None:
        assert f"more than {MAX_DATA_DEPTH} levels" in str(error)


def test_the_default_payload_limit_is_16_mib(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MAX_PAYLOAD_ENV, raising=False)
    assert max_payload_bytes() == MAX_PAYLOAD_BYTES == 16 * 1024 * 1024
    exact = "x" * (MAX_PAYLOAD_BYTES - 2)  # the two quotes make it exactly the limit
    assert len(dump_data(exact)) == MAX_PAYLOAD_BYTES
    with pytest.raises(InvalidJobError) as info:
        dump_data(exact + "x")
    message = str(info.value)
    assert f"{MAX_PAYLOAD_BYTES + 1:,} bytes" in message
    assert f"limit of {MAX_PAYLOAD_BYTES:,} bytes" in message
    assert MAX_PAYLOAD_ENV in message


@PURE
@given(
    limit=st.integers(1, 200),
    text=st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00")),
)
def test_the_payload_limit_counts_utf8_bytes_of_json(limit: int, text: str) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv(MAX_PAYLOAD_ENV, str(limit))
        size = len(json.dumps(text, ensure_ascii=False).encode("utf-8"))
        _, error = must_not_crash(lambda: dump_data(text))
        assert (error is None) == (size <= limit)
        if error is not None:
            assert isinstance(error, InvalidJobError)
            assert f"{size:,} bytes" in str(error)


@pytest.mark.parametrize("raw", ["abc", "0", "-5", "1.5", "16MB", "1e6"])
def test_a_bad_payload_limit_names_the_variable(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv(MAX_PAYLOAD_ENV, raw)
    with pytest.raises(ConfigurationError, match=MAX_PAYLOAD_ENV):
        dump_data({})
    with pytest.raises(ConfigurationError, match=MAX_PAYLOAD_ENV):
        enqueue_params({"data": {"a": 1}}, {})


def test_an_empty_payload_limit_means_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MAX_PAYLOAD_ENV, " ")
    assert max_payload_bytes() == MAX_PAYLOAD_BYTES
    monkeypatch.setenv(MAX_PAYLOAD_ENV, "1024")
    assert max_payload_bytes() == 1024


# -- names, priorities, whole jobs -----------------------------------------------------------


@PURE
@given(value=st.one_of(hostile_text, clean_text, garbage(), st.text(min_size=500, max_size=3000)))
def test_names_are_returned_unchanged_or_refused(value: Any) -> None:
    text = isinstance(value, str) and storable_text(value)
    short = text and len(value.encode("utf-8")) <= MAX_NAME_BYTES
    reserved = text and value.startswith("pgqueue.")
    queue = short and value != ""
    for call, ok in [
        (lambda: check_text("name", value), text),
        (lambda: check_text("queue", value), queue),
        (lambda: check_text("queue name", value), queue),
        (lambda: check_text("name", value, max_bytes=MAX_NAME_BYTES), short),
        (lambda: check_job_name(value), short and not reserved),
        (lambda: check_job_name(value, max_bytes=None), text and not reserved),
    ]:
        result, error = must_not_crash(call)
        assert (error is None) == ok, error
        if ok:
            assert result is value


@PURE
@given(value=st.one_of(garbage(), st.sampled_from([*PRIORITY_NAMES, " HIGH ", "Low", "urgent"])))
def test_priorities_are_int4_or_refused(value: Any) -> None:
    result, error = must_not_crash(lambda: to_priority(value))
    if isinstance(value, str):
        expected = PRIORITY_NAMES.get(value.strip().lower())
    elif isinstance(value, int) and not isinstance(value, bool) and -(2**31) <= value < 2**31:
        expected = value
    else:
        expected = None
    assert result == expected
    assert (error is None) == (expected is not None)


job_values = st.fixed_dictionaries(
    {},
    optional={
        "name": st.one_of(hostile_text, garbage()),
        "queue": st.one_of(hostile_text, garbage()),
        "priority": st.one_of(st.integers(-(2**33), 2**33), garbage()),
        "data": json_data,
        "scheduled_at": st.one_of(
            st.datetimes(timezones=st.timezones()), st.timedeltas(), garbage()
        ),
        "max_attempts": st.one_of(st.integers(-5, 2**32), garbage()),
        "retry": st.one_of(
            st.dictionaries(
                st.sampled_from(["backoff", "delay", "factor", "jitter", "until", "x"]),
                garbage(),
                max_size=3,
            ),
            garbage(),
        ),
        "schedule": st.one_of(hostile_text, st.sampled_from(["@daily", "every 5 minutes"])),
        "bogus": garbage(),
    },
)


@PURE
@given(job=job_values, non_string_key=st.booleans())
def test_enqueue_params_raise_only_pgqueue_errors(
    job: dict[Any, Any], non_string_key: bool
) -> None:
    if non_string_key:
        job = {**job, 1: "one", (2,): "two"}
    params, error = must_not_crash(lambda: enqueue_params(job, {}))
    if error is None:
        assert params.name is None or params.name == job["name"]
        assert params.queue is None or params.queue == job["queue"]
        if params.data is not None:
            assert json.loads(params.data) == as_json(job["data"])
    else:
        assert isinstance(error, InvalidJobError)


@PURE
@given(when=st.one_of(st.datetimes(timezones=st.timezones()), st.timedeltas()))
def test_scheduled_at_is_refused_when_it_could_not_be_read_back(when: datetime | timedelta) -> None:
    _, error = must_not_crash(lambda: enqueue_params({"scheduled_at": when}, {}))
    if error is None:
        moment = when if isinstance(when, datetime) else datetime.now(UTC) + when
        assert datetime(1, 1, 2, tzinfo=UTC) <= moment <= datetime(9999, 12, 30, tzinfo=UTC)
        # Readable in the furthest time zones either side.
        for offset in (-16, 16):
            moment.astimezone(timezone(timedelta(hours=offset, minutes=-1 if offset < 0 else 1)))
    else:
        assert "out of range" in str(error)


# -- intervals and retry policies -----------------------------------------------------------------

interval_numbers = st.one_of(
    st.integers(-2, 10),
    st.integers(400, 500).map(lambda digits: 10**digits),
    st.integers(0, 2_000_000),
    st.floats(),
    st.floats(0, 1e-5),
    st.just(1e-300),
    garbage(),
)


@PURE
@given(
    interval=st.one_of(
        st.dictionaries(
            st.one_of(st.sampled_from(INTERVAL_KEYS), dict_keys), interval_numbers, max_size=4
        ),
        st.timedeltas(),
        garbage(),
    )
)
def test_intervals_are_bounded_or_refused(interval: Any) -> None:
    result, error = must_not_crash(lambda: normalize_interval(interval))
    if error is not None:
        assert isinstance(error, InvalidJobError)
        return
    assert set(result) <= set(INTERVAL_KEYS)
    seconds = (
        result.get("years", 0) * 366 * 86400
        + result.get("months", 0) * 31 * 86400
        + result.get("weeks", 0) * 7 * 86400
        + result.get("days", 0) * 86400
        + result.get("hours", 0) * 3600
        + result.get("minutes", 0) * 60
        + result.get("seconds", 0)
    )
    # Postgres rounds to microseconds: a shorter interval would repeat the job without pause;
    # a longer one than 1000 years would take the next run out of Postgres's or Python's range.
    assert seconds >= 1e-6
    assert seconds <= 1000 * 366 * 86400
    for key, value in result.items():
        assert value >= 0
        if key != "seconds":
            assert isinstance(value, int)
            assert not isinstance(value, bool)
    json.dumps(result, allow_nan=False)


retry_values = st.one_of(
    st.integers(-5, 10**9),
    st.integers(300, 400).map(lambda digits: -(10**digits)),
    st.integers(300, 400).map(lambda digits: 10**digits),
    st.floats(),
    st.sampled_from(["fixed", "exponential"]),
)


@PURE
@given(
    policy=st.one_of(
        st.dictionaries(
            st.one_of(
                st.sampled_from(
                    ["backoff", "delay", "factor", "max_delay", "jitter", "max_duration", "until"]
                ),
                dict_keys,
            ),
            st.one_of(retry_values, garbage()),
            max_size=4,
        ),
        garbage(),
    )
)
def test_retry_policies_are_json_or_refused(policy: Any) -> None:
    result, error = must_not_crash(lambda: normalize_retry(policy))
    if error is None and result is not None:
        json.dumps(result, allow_nan=False)


@PURE
@given(
    spec=st.one_of(
        st.dictionaries(
            st.one_of(st.sampled_from(["retries", "wait", "retry_count"]), dict_keys),
            st.one_of(retry_values, garbage()),
            max_size=3,
        ),
        st.dictionaries(
            st.sampled_from(
                [
                    "retries",
                    "wait",
                    "backoff",
                    "until",
                    "retry_count",
                    "initial_interval",
                    "backoffFactor",
                    "max_interval",
                    "randomize_interval",
                ]
            ),
            st.one_of(retry_values, st.booleans(), garbage()),
            max_size=4,
        ),
        st.integers(300, 400).map(lambda digits: 10**digits),
        garbage(),
    )
)
def test_seed_retry_options_are_policies_or_refused(spec: Any) -> None:
    for convert in (reaction_retry, gadget_retry):
        result, error = must_not_crash(functools.partial(convert, spec))
        if error is None:
            max_attempts, policy = result
            assert 1 <= max_attempts <= 2**31 - 1
            json.dumps(policy, allow_nan=False)


# -- schedules ------------------------------------------------------------------------------

CRON_ITEMS = st.one_of(
    st.sampled_from(["*", "*/5", "*/0", "*/99", "1-5", "5-1", "mon-fri", "jan", "sun", "L", "?"]),
    st.integers(-1, 70).map(str),
    st.integers(0, 10**30).map(str),
    st.just("9" * 5000),
    st.builds(lambda a, b: f"{a}-{b}", st.integers(0, 70), st.integers(0, 70)),
    st.builds(lambda a, s: f"{a}/{s}", st.integers(0, 70), st.integers(0, 70)),
    st.text("0123456789*,-/ ", max_size=6),
)
cron_text = st.one_of(
    st.lists(st.lists(CRON_ITEMS, min_size=1, max_size=3).map(",".join), max_size=7).map(" ".join),
    st.sampled_from(["@daily", "@hourly", "@yearly", "@Weekly", "@reboot", "@daily x", "@", " @"]),
)
TEXT_WORDS = st.one_of(
    st.sampled_from(
        [
            "every",
            "at",
            "on",
            "the",
            "of",
            "in",
            "and",
            "also",
            "except",
            "starting",
            "start",
            "between",
            "first",
            "last",
            "to",
            "through",
            "am",
            "pm",
            "weekday",
            "weekdays",
            "weekend",
            "weekends",
            "second",
            "seconds",
            "s",
            "min",
            "minute",
            "minutes",
            "hour",
            "h",
            "hours",
            "day",
            "days",
            "week",
            "weeks",
            "month",
            "months",
            "year",
            "years",
            "mon",
            "monday",
            "tue",
            "thurs",
            "sun",
            "sundays",
            "jan",
            "january",
            "feb",
            "sept",
            "dec",
            ",",
            "-",
            ":",
            "2024",
            "foo",
        ]
    ),
    st.integers(0, 70).map(str),
    st.builds(
        lambda n, suffix: f"{n}{suffix}", st.integers(0, 40), st.sampled_from(["st", "nd", "th"])
    ),
    st.builds(lambda h, m: f"{h}:{m:02d}", st.integers(0, 30), st.integers(0, 70)),
    st.builds(lambda h, m, s: f"{h}:{m}:{s}", st.integers(0, 99), st.integers(0, 9), st.integers()),
    st.just("9" * 5000),
)
text_schedule = st.lists(TEXT_WORDS, min_size=0, max_size=12).map(" ".join)
schedule_text = st.one_of(
    cron_text,
    text_schedule,
    st.text(max_size=40),
    hostile_text,
    st.sampled_from(["every 5 minutes", "0 9 * * mon-fri", "every weekday at 9:00"]),
)
moments = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(2400, 1, 1), timezones=st.timezones()
)


@PURE
@given(text=schedule_text, moment=moments)
def test_schedules_parse_or_raise_a_pgqueue_error(text: str, moment: datetime) -> None:
    schedule, error = must_not_crash(lambda: parse_schedule(text))
    if error is not None:
        assert isinstance(error, InvalidJobError)
        return
    assert isinstance(schedule, Schedule)
    assert Schedule.from_json(json.loads(json.dumps(schedule.to_json()))) == schedule
    first = schedule.next_after(moment)
    assert first.tzinfo is UTC
    assert first > moment
    assert first.microsecond == 0
    assert schedule.next_after(first) > first


@PURE
@given(text=st.one_of(cron_text, text_schedule), kind=st.sampled_from(["cron", "text", "sql"]))
def test_schedules_of_a_given_kind_parse_or_raise_a_pgqueue_error(text: str, kind: Any) -> None:
    must_not_crash(lambda: Schedule(text, kind))
    must_not_crash(lambda: Schedule.from_json({"text": text, "kind": kind}))


@PURE
@given(value=garbage())
def test_a_schedule_that_is_not_text_is_refused(value: Any) -> None:
    assume(not isinstance(value, str))
    with pytest.raises(InvalidJobError):
        parse_schedule(value)
    with pytest.raises(InvalidJobError):
        Schedule.from_json(value)


HUGE = 10**5000  # more digits than repr() will print
HUGE_KEY: dict[Any, Any] = {HUGE: 1}
MIXED_KEYS: dict[Any, Any] = {1: 1, "x": 2}


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda: to_priority(HUGE), id="priority"),
        pytest.param(lambda: to_priority("x" * 10**6), id="priority-name"),
        pytest.param(lambda: dump_data({"a": {HUGE: 1}}), id="data-key"),
        pytest.param(lambda: dump_data([HUGE]), id="data-int"),
        pytest.param(lambda: enqueue_params({**HUGE_KEY, "name": "a"}, {}), id="job-key"),
        pytest.param(lambda: enqueue_params({"max_attempts": -HUGE}, {}), id="max-attempts"),
        pytest.param(lambda: normalize_interval({"hours": HUGE}), id="interval-value"),
        pytest.param(lambda: normalize_interval(HUGE_KEY), id="interval-key"),
        pytest.param(
            lambda: normalize_interval({"seconds": float(10**300)}), id="interval-seconds"
        ),
        pytest.param(lambda: normalize_retry({"delay": HUGE}), id="retry-value"),
        pytest.param(lambda: normalize_retry(HUGE_KEY), id="retry-key"),
        pytest.param(lambda: reaction_retry({"wait": HUGE}), id="reaction-wait"),
        pytest.param(lambda: reaction_retry({"retries": -HUGE}), id="reaction-retries"),
        pytest.param(lambda: reaction_retry(MIXED_KEYS), id="reaction-mixed-keys"),
        pytest.param(lambda: gadget_retry({"initial_interval": 10**400}), id="gadget-interval"),
        pytest.param(lambda: gadget_retry({"retry_count": -HUGE}), id="gadget-count"),
        pytest.param(
            lambda: Schedule.from_json({"text": HUGE, "kind": "cron"}), id="stored-schedule"
        ),
        pytest.param(lambda: parse_schedule("every " + "9" * 5000 + " minutes"), id="text-number"),
        pytest.param(lambda: parse_schedule("*/" + "9" * 5000 + " * * * *"), id="cron-step"),
    ],
)
def test_hostile_values_give_a_short_pgqueue_error(call: Callable[[], Any]) -> None:
    with pytest.raises(InvalidJobError) as info:
        call()
    assert len(str(info.value)) < 400


def test_the_json_oracle_knows_the_cases_that_matter() -> None:
    assert storable_json({"a": [1, 2.5, None, True, "x", ()]})
    assert not storable_json({"a": math.nan})
    assert not storable_json({1: "a"})
    assert not storable_json({"a": b"x"})
    assert not storable_json(Decimal(1))
    assert not storable_json(["\x00"])
    assert not storable_json(nested(MAX_DATA_DEPTH + 1))
    assert storable_json(nested(MAX_DATA_DEPTH))
    assert isinstance(pgqueue.PgQueueError("x"), Exception)
