"""Payload of `audit.checkpoint`: a signed head of a tenant's hash chain (SPEC Guarantee 4)."""

from typing import ClassVar

from pydantic import Field

from schemas.models.base import EventPayload, UtcDateTime


class AuditCheckpoint(EventPayload):
    event_type: ClassVar[str] = "audit.checkpoint"

    position: int = Field(ge=1)
    head_hash: bytes = Field(min_length=32, max_length=32)
    signed_at: UtcDateTime
    signature: bytes = Field(min_length=64, max_length=64)
    key_id: str
