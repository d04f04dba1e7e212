"""Publisher pieces that need no broker: event ids and ``build_event``."""

from __future__ import annotations

import uuid

import pytest

from producers.publisher import InvalidEvent, build_event, random_uuid
from schemas.catalog import default_catalog

WEBHOOK_DELETED = default_catalog().get("webhook.deleted")


def test_random_ids_are_version_4_uuids_and_distinct() -> None:
    texts = [random_uuid() for _ in range(5000)]
    assert len(set(texts)) == len(texts)
    for text in texts:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, text)
    nibbles = {text[19] for text in texts}
    assert nibbles == set("89ab"), "the variant nibble carries two random bits"


def test_built_events_hold_a_uuid_object_and_refuse_bad_data() -> None:
    event = build_event(
        WEBHOOK_DELETED,
        subject="wh-1",
        tenant_id="acme",
        source="test",
        data={"webhook_id": "wh-1"},
    )
    assert isinstance(event.id, uuid.UUID) and event.id.version == 4
    with pytest.raises(InvalidEvent, match=r"invalid webhook\.deleted: data\.webhook_id"):
        build_event(WEBHOOK_DELETED, subject="wh-1", tenant_id="acme", source="t", data={})
