"""The body of a delivery: the event as a CloudEvents 1.0 JSON document (structured mode).

Built once when the delivery is enqueued and stored, so every retry sends the
same bytes. The envelope's ledgerbus attributes travel as CloudEvents extension
attributes (lower-case alphanumeric names, as the spec requires).
"""

from __future__ import annotations

import json
from typing import Any

from schemas.models import Envelope

CONTENT_TYPE = "application/cloudevents+json"


def cloud_event(envelope: Envelope[Any]) -> dict[str, Any]:
    """The CloudEvents attributes and data of ``envelope``."""
    document: dict[str, Any] = {
        "specversion": "1.0",
        "id": str(envelope.id),
        "source": envelope.source,
        "type": envelope.type,
        "subject": envelope.subject,
        "time": envelope.time.isoformat().replace("+00:00", "Z"),
        "datacontenttype": "application/json",
        "tenantid": envelope.tenant_id,
    }
    if envelope.correlation_id is not None:
        document["correlationid"] = envelope.correlation_id
    if envelope.causation_id is not None:
        document["causationid"] = envelope.causation_id
    document["data"] = envelope.data.model_dump(mode="json")
    return document


def body(envelope: Envelope[Any]) -> str:
    """``cloud_event`` as compact JSON: the exact text that is signed and sent."""
    return json.dumps(cloud_event(envelope), separators=(",", ":"), ensure_ascii=False)
