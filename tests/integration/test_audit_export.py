"""``ledgerbus audit export``, checked the way a third party would: from the files alone."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from event_store.checkpoints import KEY_FILE, Signer, load_or_create_key
from event_store.store import EventStore
from schemas.catalog import default_catalog
from schemas.registry_client import RegistryClient
from schemas.serde import EventSerializer
from streams.checkpoints import checkpoint_event
from tests.conftest import Isolation
from tests.support.archived import archive
from tests.support.cli import run_cli
from tests.support.events import new_event

CATALOG = default_catalog()


class Rejected(Exception):
    """The export does not prove what it claims."""


def third_party_check(folder: Path) -> int:
    """Verify an export with hashlib, cryptography, json and base64 only; the
    number of events the signed checkpoint vouches for, or ``Rejected``."""
    public_key = serialization.load_pem_public_key((folder / "audit_public_key.pem").read_bytes())
    if not isinstance(public_key, Ed25519PublicKey):
        raise Rejected("not an Ed25519 key")
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    checkpoint = json.loads((folder / "checkpoint.json").read_text())
    if checkpoint["key_id"] != hashlib.sha256(raw).hexdigest()[:16]:
        raise Rejected("checkpoint signed by another key")
    message = (
        b"ledgerbus.audit.checkpoint.v1\x00"
        + checkpoint["tenant_id"].encode()
        + b"\x00"
        + checkpoint["position"].to_bytes(8, "big")
        + bytes.fromhex(checkpoint["head_hash"])
        + checkpoint["signed_at_micros"].to_bytes(8, "big", signed=True)
    )
    try:
        public_key.verify(base64.b64decode(checkpoint["signature"]), message)
    except InvalidSignature:
        raise Rejected("bad checkpoint signature") from None

    prev, vouched = bytes(32), False
    with (folder / "history.ndjson").open() as lines:
        for expected, line in enumerate(lines, start=1):
            event = json.loads(line)
            if event["position"] != expected:
                raise Rejected(f"position {expected} is missing")
            if bytes.fromhex(event["prev_hash"]) != prev:
                raise Rejected(f"position {expected}: broken link")
            digest = hashlib.sha256(prev + base64.b64decode(event["body"])).digest()
            if digest.hex() != event["hash"]:
                raise Rejected(f"position {expected}: body does not match its hash")
            if expected == checkpoint["position"]:
                if digest.hex() != checkpoint["head_hash"]:
                    raise Rejected(f"position {expected}: the chain left the checkpoint")
                vouched = True
            prev = digest
    if not vouched:
        raise Rejected("the history ends before the checkpoint")
    return int(checkpoint["position"])


@pytest.fixture
def audit_env(cli_env: dict[str, str], isolation: Isolation) -> dict[str, str]:
    return {**cli_env, "LEDGERBUS_DATABASE_URL": isolation.database_url}


@pytest.fixture
def signer(cli_env: dict[str, str]) -> Signer:
    return Signer(load_or_create_key(Path(cli_env["LEDGERBUS_DATA_DIR"]) / KEY_FILE))


async def checkpointed_history(
    store: EventStore, registry: RegistryClient, signer: Signer, checkpoints: int
) -> None:
    """For each checkpoint, 10 events then a checkpoint of them; then 3 unsigned events."""
    serializer = EventSerializer(CATALOG, registry)
    for _ in range(checkpoints):
        await store.append([new_event("acme", n) for n in range(10)])
        head = await store.head("acme")
        checkpoint = signer.sign("acme", head.position, head.hash)
        await archive(store, serializer, [checkpoint_event(checkpoint, "test")])
    await store.append([new_event("acme", n) for n in range(3)])


async def export(env: dict[str, str], out: Path) -> None:
    result = await run_cli(["audit", "export", "--tenant", "acme", "--out", str(out)], env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("exported 25 events of acme to ")
    assert result.stderr.startswith("export acme: 25 events in ")  # progress


async def test_third_party_verifies_an_honest_export(
    event_store: EventStore,
    registry: RegistryClient,
    signer: Signer,
    audit_env: dict[str, str],
    tmp_path: Path,
) -> None:
    await checkpointed_history(event_store, registry, signer, checkpoints=2)
    out = tmp_path / "export"
    await export(audit_env, out)
    assert third_party_check(out) == 21  # the second checkpoint, at position 22, signs 21

    lines = [json.loads(line) for line in (out / "history.ndjson").read_text().splitlines()]
    assert [line["position"] for line in lines] == list(range(1, 26))
    stored = [event async for event in event_store.read("acme")]
    assert [base64.b64decode(line["body"]) for line in lines] == [e.body for e in stored]
    assert lines[0]["time"] == "2026-01-01T00:00:00.000000Z"
    signed = [line["checkpoint"] for line in lines if line["type"] == "audit.checkpoint"]
    assert [c["position"] for c in signed] == [10, 21]
    document = json.loads((out / "checkpoint.json").read_text())
    assert document["event_position"] == 22
    assert {k: document[k] for k in signed[1]} == signed[1]


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        ("body", "position 5: body does not match its hash"),
        ("delete", "position 5 is missing"),
        ("swap", "position 5 is missing"),
        ("signature", "bad checkpoint signature"),
        ("rechain", "position 21: the chain left the checkpoint"),
        ("truncate", "the history ends before the checkpoint"),
    ],
)
async def test_third_party_rejects_a_tampered_export(
    event_store: EventStore,
    registry: RegistryClient,
    signer: Signer,
    audit_env: dict[str, str],
    tmp_path: Path,
    tamper: str,
    reason: str,
) -> None:
    await checkpointed_history(event_store, registry, signer, checkpoints=2)
    out = tmp_path / "export"
    await export(audit_env, out)
    history = out / "history.ndjson"
    lines = [json.loads(line) for line in history.read_text().splitlines()]
    if tamper == "body":
        lines[4]["body"] = base64.b64encode(b"x" + base64.b64decode(lines[4]["body"])).decode()
    elif tamper == "delete":
        del lines[4]
    elif tamper == "swap":
        lines[4], lines[5] = lines[5], lines[4]
    elif tamper == "signature":
        document = json.loads((out / "checkpoint.json").read_text())
        document["position"] = 20
        document["head_hash"] = lines[19]["hash"]
        (out / "checkpoint.json").write_text(json.dumps(document))
    elif tamper == "rechain":  # change one body and recompute every hash after it
        lines[4]["body"] = base64.b64encode(b"another story").decode()
        prev = bytes.fromhex(lines[4]["prev_hash"])
        for line in lines[4:]:
            line["prev_hash"] = prev.hex()
            prev = hashlib.sha256(prev + base64.b64decode(line["body"])).digest()
            line["hash"] = prev.hex()
    elif tamper == "truncate":
        lines = lines[:15]
    history.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(Rejected, match=reason):
        third_party_check(out)


async def test_export_without_a_checkpoint_writes_nothing(
    event_store: EventStore,
    registry: RegistryClient,
    signer: Signer,
    audit_env: dict[str, str],
    tmp_path: Path,
) -> None:
    await checkpointed_history(event_store, registry, signer, checkpoints=0)
    out = tmp_path / "export"
    args = ["audit", "export", "--tenant", "acme", "--out", str(out)]
    result = await run_cli(args, audit_env)
    assert result.returncode == 2
    assert result.stderr == (
        "error: tenant 'acme' has no audit.checkpoint yet: nothing signed anchors its history\n"
    )
    assert list(out.iterdir()) == []

    result = await run_cli([*args[:3], "nobody", *args[4:]], audit_env)
    assert (result.returncode, result.stderr) == (2, "error: no events for tenant 'nobody'\n")


async def test_export_refuses_a_key_that_did_not_sign(
    event_store: EventStore,
    registry: RegistryClient,
    signer: Signer,
    audit_env: dict[str, str],
    tmp_path: Path,
) -> None:
    await checkpointed_history(event_store, registry, signer, checkpoints=1)
    other = tmp_path / "other.pem"
    other.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    out = tmp_path / "export"
    result = await run_cli(
        ["audit", "export", "--tenant", "acme", "--out", str(out), "--key", str(other)], audit_env
    )
    assert result.returncode == 2
    assert "the latest checkpoint is signed by key" in result.stderr
    assert list(out.iterdir()) == []
