"""Standard Webhooks signatures: the reference library verifies ours, byte for byte."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from producers.publisher import build_event
from schemas.catalog import default_catalog
from streams.webhooks.payload import body, cloud_event
from streams.webhooks.signing import (
    InvalidSecret,
    check_secret,
    new_secret,
    signature_headers,
)

BODY = '{"specversion":"1.0","id":"e1","data":{"amount_micros":5}}'


def test_new_secrets_are_whsec_base64_of_24_random_bytes() -> None:
    secrets = {new_secret() for _ in range(100)}
    assert len(secrets) == 100
    for secret in secrets:
        assert secret.startswith("whsec_")
        assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 24
        assert check_secret(secret) == secret


def test_the_library_verifies_what_we_sign() -> None:
    secret = new_secret()
    headers = signature_headers(secret, "msg_1", BODY, datetime.now(UTC))
    assert Webhook(secret).verify(BODY, headers) == {
        "specversion": "1.0",
        "id": "e1",
        "data": {"amount_micros": 5},
    }
    assert headers["webhook-id"] == "msg_1"
    assert headers["webhook-signature"].startswith("v1,")


def test_signature_is_byte_equal_to_the_librarys() -> None:
    secret = new_secret()
    at = datetime(2025, 1, 31, 12, 0, 0, 700_000, tzinfo=UTC)
    headers = signature_headers(secret, "msg_2", BODY, at)
    assert headers["webhook-timestamp"] == str(int(at.timestamp()))
    assert headers["webhook-signature"] == Webhook(secret).sign("msg_2", at, BODY)


@pytest.mark.parametrize(
    ("change", "what"),
    [
        ("body", "a changed body"),
        ("webhook-id", "another id"),
        ("webhook-timestamp", "another timestamp"),
        ("secret", "another secret"),
    ],
)
def test_tampering_fails_verification(change: str, what: str) -> None:
    secret = new_secret()
    at = datetime.now(UTC)
    headers = signature_headers(secret, "msg_3", BODY, at)
    data = BODY
    if change == "body":
        data = BODY.replace("5", "6")
    elif change == "webhook-id":
        headers["webhook-id"] = "msg_4"
    elif change == "webhook-timestamp":
        headers["webhook-timestamp"] = str(int(at.timestamp()) - 1)
    else:
        secret = new_secret()
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(data, headers)


def test_stale_timestamps_are_rejected_by_receivers() -> None:
    secret = new_secret()
    old = datetime.now(UTC) - timedelta(minutes=10)
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(secret).verify(BODY, signature_headers(secret, "msg_5", BODY, old))


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        ("c2VjcmV0c2VjcmV0c2VjcmV0", "must start with 'whsec_'"),
        ("whsec_not base64!", "not base64"),
        ("whsec_" + base64.b64encode(b"short").decode(), "at least 16 bytes"),
    ],
)
def test_bad_secrets_are_refused_clearly(secret: str, message: str) -> None:
    with pytest.raises(InvalidSecret, match=message):
        check_secret(secret)


def test_body_is_a_structured_mode_cloud_event() -> None:
    event = build_event(
        default_catalog().get("budget.set"),
        subject="proj-1",
        tenant_id="acme",
        data={"project_id": "proj-1", "amount_micros": 200_000_000},
        source="test",
        correlation_id="flow-1",
    )
    document = cloud_event(event)
    assert document == {
        "specversion": "1.0",
        "id": str(event.id),
        "source": "test",
        "type": "budget.set",
        "subject": "proj-1",
        "time": event.time.isoformat().replace("+00:00", "Z"),
        "datacontenttype": "application/json",
        "tenantid": "acme",
        "correlationid": "flow-1",
        "data": event.data.model_dump(mode="json"),
    }
    assert uuid.UUID(document["id"]) == event.id
    assert body(event) == body(event)  # stable text: every retry signs the same bytes
