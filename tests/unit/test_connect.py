"""Connecting: a malformed DSN is pgqueue's ConfigurationError, one clean line."""

from __future__ import annotations

import pytest

from pgqueue import ConfigurationError
from pgqueue._db import connect


def test_a_malformed_dsn_is_a_configuration_error_on_one_line() -> None:
    with pytest.raises(ConfigurationError) as caught:
        connect("garbage")
    message = str(caught.value)
    assert message.startswith("invalid DSN: ")
    assert "garbage" in message
    assert "\n" not in message  # libpq's text ends in a newline
