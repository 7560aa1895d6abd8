"""Schemathesis hooks for tcc-coordinator's CI run: test data the OpenAPI document cannot
describe, generated the way a real client would send it.

- A participant link's `expires` must lie in the future (the participant has already
  cancelled a link whose expiry has passed): generated date-times move an hour ahead.
- An `Idempotency-Key` names one request: reusing a key with another body is a 422 by
  contract, so every generated key gets a fresh random suffix.

Values of the wrong type or shape (the negative cases) are left alone.
"""

import datetime
import re
import uuid

import schemathesis

DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T")
KEY = re.compile(r"^[!-~]{1,200}$")


def _in_an_hour():
    now = datetime.datetime.now(datetime.timezone.utc)
    return (now + datetime.timedelta(hours=1)).isoformat()


def _is_date_time(value):
    """A valid RFC 3339 date-time (an invalid one is a negative case: left alone)."""
    if not isinstance(value, str) or not DATE_TIME.match(value):
        return False
    try:
        datetime.datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return False
    return True


def _future(value):
    if isinstance(value, dict):
        return {
            k: _in_an_hour() if k == "expires" and _is_date_time(v) else _future(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_future(v) for v in value]
    return value


@schemathesis.hook
def map_body(ctx, body):
    return _future(body)


@schemathesis.hook
def map_headers(ctx, headers):
    if headers and isinstance(headers.get("Idempotency-Key"), str):
        key = headers["Idempotency-Key"]
        if KEY.match(key):
            headers["Idempotency-Key"] = f"{key[:200]}-{uuid.uuid4().hex}"
    return headers
