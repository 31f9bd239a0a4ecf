"""The keyset cursor is part of the API: cursors handed out before stay valid."""

from __future__ import annotations

from datetime import datetime, timezone
from types import SimpleNamespace

import pytest

from retouch.serving.core.errors import InvalidInput
from retouch.serving.core.pagination import check_limit, decode_cursor, encode_cursor

# Issued for a row created 2026-05-06T05:56:00.123456Z with id "gen_abc".
ISSUED = "MjAyNi0wNS0wNlQwNTo1NjowMC4xMjM0NTYrMDA6MDB8Z2VuX2FiYw"
ISSUED_AT = datetime(2026, 5, 6, 5, 56, 0, 123456, tzinfo=timezone.utc)


def test_an_issued_cursor_still_decodes_and_encodes_the_same():
    assert decode_cursor(ISSUED) == (ISSUED_AT, "gen_abc")
    assert encode_cursor(SimpleNamespace(created_at=ISSUED_AT, id="gen_abc")) == ISSUED


@pytest.mark.parametrize("cursor", ["@@", "bm8tc2VwYXJhdG9y", "MjAyNi0wNS0wNlQwNTo1NjowMHxn"])
def test_foreign_cursors_are_invalid_input(cursor):
    # not base64 / no separator / a time without a zone
    with pytest.raises(InvalidInput) as caught:
        decode_cursor(cursor)
    assert caught.value.field == "cursor"


def test_limits_outside_the_page_size_name_the_field():
    check_limit(1), check_limit(100)
    for limit in (0, 101):
        with pytest.raises(InvalidInput) as caught:
            check_limit(limit)
        assert caught.value.field == "limit"
