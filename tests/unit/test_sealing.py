"""Sealed boxes: both suites open, and every way of forging, tampering or misusing one is refused.

Pure crypto logic: the directory and the replay record are small in-memory
doubles here (their PostgreSQL versions have integration tests).
"""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from consumers.identity import AgentIdentity
from consumers.key_directory import AgentKey
from consumers.replay_guard import Position
from consumers.sealing import Binding, Opener, Rejected, RejectionReason, seal
from schemas.models.agent import SealedBox
from schemas.models.enums import HpkeSuite
from tests.support.sealing import published_key

X25519 = HpkeSuite.X25519_SHA256_CHACHA20POLY1305
HYBRID = HpkeSuite.MLKEM768X25519_SHA256_CHACHA20POLY1305
TENANT = "acme"
NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
REGISTERED = NOW - timedelta(days=1)
PLAINTEXT = b"review PR #12: the OAuth callback \x00\xff" * 20
POSITION: Position = ("agent-messages", 3, 1042)


class Directory:
    """The key directory's lookups, from a dict."""

    def __init__(self) -> None:
        self.keys: dict[tuple[str, str, str], AgentKey] = {}

    def add(self, key: AgentKey, tenant_id: str = TENANT) -> AgentKey:
        self.keys[(tenant_id, key.agent_name, key.key_id)] = key
        return key

    async def signing_key(self, tenant_id: str, agent_name: str, key_id: str) -> AgentKey | None:
        return self.keys.get((tenant_id, agent_name, key_id))


class Sightings:
    """The replay guard's rule, from a dict."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, str, str], Position] = {}

    async def first_sighting(
        self, tenant_id: str, recipient: str, message_id: str, position: Position
    ) -> bool:
        return self.seen.setdefault((tenant_id, recipient, message_id), position) == position


@dataclasses.dataclass
class World:
    """A sender and a recipient registered in one tenant, and the recipient's opener."""

    sender: AgentIdentity
    recipient: AgentIdentity
    directory: Directory
    sightings: Sightings
    clock: list[datetime]

    @property
    def opener(self) -> Opener:
        return Opener(self.recipient, self.directory, self.sightings, clock=lambda: self.clock[0])

    def seal(self, to: AgentKey | None = None, **carrier: Any) -> tuple[SealedBox, Carrier]:
        given = dataclasses.replace(Carrier(), **carrier)
        key = to or self.directory.keys[(TENANT, "qa", self.recipient.key_id)]
        box = seal(
            PLAINTEXT,
            identity=self.sender,
            recipient=key,
            tenant_id=given.tenant_id,
            message_id=given.message_id,
            purpose=given.purpose,
            correlation_id=given.correlation_id,
            sealed_at=given.sealed_at,
        )
        return box, given

    async def open(self, box: SealedBox, given: Carrier, **changes: Any) -> bytes:
        carrier = dataclasses.replace(given, **changes)
        return await self.opener.open(
            box,
            tenant_id=carrier.tenant_id,
            message_id=carrier.message_id,
            purpose=carrier.purpose,
            correlation_id=carrier.correlation_id,
            position=carrier.position,
            sealed_at=carrier.given_sealed_at,
        )


@dataclasses.dataclass(frozen=True)
class Carrier:
    """What the event carrying a box says about it (and where Kafka had it)."""

    tenant_id: str = TENANT
    message_id: str = "0195a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
    purpose: str = "agent.message"
    correlation_id: str | None = "corr-7"
    sealed_at: datetime = NOW
    position: Position = POSITION
    given_sealed_at: datetime | None = None


def make_world(tmp_path: Path, suite: HpkeSuite = X25519) -> World:
    sender = AgentIdentity.load_or_create(tmp_path / "dev.json", "dev")
    recipient = AgentIdentity.load_or_create(tmp_path / "qa.json", "qa", suite)
    directory = Directory()
    directory.add(published_key(sender, REGISTERED))
    directory.add(published_key(recipient, REGISTERED))
    return World(sender, recipient, directory, Sightings(), [NOW])


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path)


def counted(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def refused(
    world: World, reason: RejectionReason, box: SealedBox, given: Carrier, **changes: Any
) -> Rejected:
    """Opening fails with ``reason``, is counted, and records nothing as seen."""
    before = counted("ledgerbus_sealed_rejected_total", reason=reason.value)
    seen = dict(world.sightings.seen)
    with pytest.raises(Rejected) as caught:
        await world.open(box, given, **changes)
    assert caught.value.reason == reason, caught.value
    assert counted("ledgerbus_sealed_rejected_total", reason=reason.value) == before + 1
    if reason != RejectionReason.UNDECRYPTABLE:  # the only check after the replay record
        assert world.sightings.seen == seen
    return caught.value


# ---------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("suite", [X25519, HYBRID])
async def test_a_box_opens_for_its_recipient_in_both_suites(
    tmp_path: Path, suite: HpkeSuite
) -> None:
    world = make_world(tmp_path, suite)
    box, given = world.seal()
    assert (box.sender, box.recipient, box.suite) == ("dev", "qa", suite)
    assert (box.sender_key_id, box.recipient_key_id) == (
        world.sender.key_id,
        world.recipient.key_id,
    )
    assert (box.message_id, box.sealed_at) == (given.message_id, NOW)
    assert len(box.enc) == (32 if suite == X25519 else 1120)
    assert len(box.ciphertext) == len(PLAINTEXT) + 16  # ChaCha20-Poly1305 tag
    assert PLAINTEXT not in box.ciphertext
    opened = counted("ledgerbus_sealed_opened_total")
    assert await world.open(box, given) == PLAINTEXT
    assert counted("ledgerbus_sealed_opened_total") == opened + 1


async def test_the_box_survives_avro_and_json(world: World) -> None:
    box, given = world.seal()
    assert SealedBox.model_validate_json(box.model_dump_json()) == box
    assert await world.open(SealedBox.model_validate_json(box.model_dump_json()), given)


async def test_a_redelivery_at_the_same_position_opens_again(world: World) -> None:
    box, given = world.seal()
    assert await world.open(box, given) == PLAINTEXT
    assert await world.open(box, given) == PLAINTEXT


async def test_an_empty_payload_and_no_correlation_id_are_fine(world: World) -> None:
    box = seal(
        b"",
        identity=world.sender,
        recipient=world.directory.keys[(TENANT, "qa", world.recipient.key_id)],
        tenant_id=TENANT,
        message_id=uuid.UUID(Carrier.message_id),
        purpose="agent.handoff",
        correlation_id=None,
        sealed_at=NOW,
    )
    given = Carrier(purpose="agent.handoff", correlation_id=None)
    assert await world.open(box, given) == b""


# ---------------------------------------------------------------------------- rotation


async def test_a_rotated_out_key_opens_until_its_grace_period_ends(world: World) -> None:
    old = world.directory.keys[(TENANT, "qa", world.recipient.key_id)]
    box, given = world.seal(to=old)
    world.recipient.rotate()
    grace_end = NOW + timedelta(minutes=30)
    world.directory.add(dataclasses.replace(old, retired_at=grace_end))
    world.directory.add(published_key(world.recipient, NOW))
    assert await world.open(box, given) == PLAINTEXT
    new_box, new_given = world.seal(message_id="new-1")
    assert new_box.recipient_key_id == world.recipient.key_id != old.key_id
    assert await world.open(new_box, new_given) == PLAINTEXT

    late, late_given = world.seal(to=old, message_id="late-1", sealed_at=grace_end)
    world.clock[0] = grace_end
    detail = await refused(world, RejectionReason.UNKNOWN_KEY, late, late_given)
    assert "grace period over" in detail.detail


async def test_a_rotation_not_yet_projected_does_not_refuse_the_old_key(world: World) -> None:
    box, given = world.seal()
    world.recipient.rotate()  # the directory still shows the old key as current
    assert await world.open(box, given) == PLAINTEXT


# ---------------------------------------------------------------------------- each reason


async def test_missing_signature_or_binding_fields(world: World) -> None:
    box, given = world.seal()
    for change in ({"signature": b""}, {"message_id": None}, {"sealed_at": None}):
        unsigned = box.model_copy(update=change)
        await refused(world, RejectionReason.MISSING_SIGNATURE, unsigned, given)


async def test_envelope_mismatch(world: World) -> None:
    box, given = world.seal()
    await refused(world, RejectionReason.ENVELOPE_MISMATCH, box, given, message_id="other-event")
    await refused(
        world,
        RejectionReason.ENVELOPE_MISMATCH,
        box,
        given,
        given_sealed_at=NOW + timedelta(microseconds=1),
    )
    assert await world.open(box, given, given_sealed_at=NOW) == PLAINTEXT


async def test_wrong_recipient(tmp_path: Path, world: World) -> None:
    box, given = world.seal()
    eve = AgentIdentity.load_or_create(tmp_path / "eve.json", "eve")
    opener = Opener(eve, world.directory, world.sightings, clock=lambda: NOW)
    with pytest.raises(Rejected) as caught:
        await opener.open(
            box,
            tenant_id=TENANT,
            message_id=given.message_id,
            purpose=given.purpose,
            correlation_id=given.correlation_id,
            position=POSITION,
        )
    assert caught.value.reason == RejectionReason.WRONG_RECIPIENT


async def test_unknown_sender_key(world: World) -> None:
    box, given = world.seal()
    del world.directory.keys[(TENANT, "dev", world.sender.key_id)]
    await refused(world, RejectionReason.UNKNOWN_KEY, box, given)


async def test_a_sender_key_of_another_tenant_is_unknown(world: World) -> None:
    box, given = world.seal(tenant_id="other")
    world.directory.add(world.directory.keys[(TENANT, "qa", world.recipient.key_id)], "other")
    await refused(world, RejectionReason.UNKNOWN_KEY, box, given)


async def test_revoked_sender_key(world: World) -> None:
    box, given = world.seal()
    sender = world.directory.keys[(TENANT, "dev", world.sender.key_id)]
    world.directory.add(dataclasses.replace(sender, revoked_at=NOW))
    await refused(world, RejectionReason.REVOKED_KEY, box, given)


async def test_revoked_recipient_key(world: World) -> None:
    box, given = world.seal()
    mine = world.directory.keys[(TENANT, "qa", world.recipient.key_id)]
    world.directory.add(dataclasses.replace(mine, revoked_at=NOW))
    await refused(world, RejectionReason.REVOKED_KEY, box, given)


async def test_sealed_to_a_key_id_we_never_held(tmp_path: Path, world: World) -> None:
    """Someone registered other keys under our name: we cannot and must not open it."""
    impostor = AgentIdentity.load_or_create(tmp_path / "impostor.json", "qa")
    box, given = world.seal(to=published_key(impostor, NOW))
    await refused(world, RejectionReason.UNKNOWN_KEY, box, given)


async def test_sealed_with_another_suite_than_our_key(tmp_path: Path, world: World) -> None:
    hybrid = AgentIdentity.load_or_create(tmp_path / "hybrid.json", "qa", HYBRID)
    claimed = dataclasses.replace(published_key(hybrid, NOW), key_id=world.recipient.key_id)
    box, given = world.seal(to=claimed)
    await refused(world, RejectionReason.UNSUPPORTED_SUITE, box, given)


async def test_sealed_to_other_keys_under_our_key_id(tmp_path: Path, world: World) -> None:
    stranger = AgentIdentity.load_or_create(tmp_path / "stranger.json", "qa")
    claimed = dataclasses.replace(published_key(stranger, NOW), key_id=world.recipient.key_id)
    box, given = world.seal(to=claimed)
    await refused(world, RejectionReason.UNDECRYPTABLE, box, given)


@pytest.mark.parametrize("off", [timedelta(minutes=5, microseconds=1), -timedelta(minutes=6)])
async def test_stale_boxes(world: World, off: timedelta) -> None:
    box, given = world.seal(sealed_at=NOW + off)
    await refused(world, RejectionReason.STALE, box, given)
    world.clock[0] = NOW + off
    assert await world.open(box, given) == PLAINTEXT


async def test_a_wider_window_per_call(world: World) -> None:
    box, given = world.seal(sealed_at=NOW - timedelta(hours=1))
    await refused(world, RejectionReason.STALE, box, given)
    opened = await world.opener.open(
        box,
        tenant_id=TENANT,
        message_id=given.message_id,
        purpose=given.purpose,
        correlation_id=given.correlation_id,
        position=POSITION,
        window=timedelta(hours=2),
    )
    assert opened == PLAINTEXT


async def test_replayed_at_another_position(world: World) -> None:
    box, given = world.seal()
    assert await world.open(box, given) == PLAINTEXT
    await refused(world, RejectionReason.REPLAYED, box, given, position=("agent-messages", 3, 1043))
    await refused(world, RejectionReason.REPLAYED, box, given, position=("agent-messages", 4, 1042))


# ---------------------------------------------------------------------------- tampering

TAMPERED_ENVELOPE: list[tuple[str, object, RejectionReason]] = [
    ("tenant_id", "other-tenant", RejectionReason.UNKNOWN_KEY),  # keys are per tenant
    ("message_id", "0195a1b2-0000-7e5f-8a9b-0c1d2e3f4a5b", RejectionReason.ENVELOPE_MISMATCH),
    ("purpose", "agent.handoff", RejectionReason.BAD_SIGNATURE),
    ("correlation_id", "corr-8", RejectionReason.BAD_SIGNATURE),
    ("correlation_id", None, RejectionReason.BAD_SIGNATURE),
]


@pytest.mark.parametrize(("field", "value", "reason"), TAMPERED_ENVELOPE)
async def test_the_box_is_bound_to_the_carrying_events_envelope(
    world: World, field: str, value: object, reason: RejectionReason
) -> None:
    box, given = world.seal()
    await refused(world, reason, box, given, **{field: value})


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("sealed_at", NOW + timedelta(seconds=1), RejectionReason.BAD_SIGNATURE),
        ("sender", "ops", RejectionReason.BAD_SIGNATURE),
        ("recipient", "eve", RejectionReason.WRONG_RECIPIENT),
        ("sender_key_id", "k_0000000000000000", RejectionReason.UNKNOWN_KEY),
        ("recipient_key_id", "k_0000000000000000", RejectionReason.BAD_SIGNATURE),
        ("suite", HYBRID, RejectionReason.BAD_SIGNATURE),
        ("suite", HpkeSuite.UNKNOWN, RejectionReason.BAD_SIGNATURE),
    ],
)
async def test_each_box_field_is_covered(
    tmp_path: Path, world: World, field: str, value: object, reason: RejectionReason
) -> None:
    ops = AgentIdentity.load_or_create(tmp_path / "ops.json", "ops")
    # ops signs with a key that shares dev's key id: only the signature tells them apart
    world.directory.add(
        dataclasses.replace(published_key(ops, REGISTERED), key_id=world.sender.key_id)
    )
    box, given = world.seal()
    await refused(world, reason, box.model_copy(update={field: value}), given)


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


@pytest.mark.parametrize("suite", [X25519, HYBRID])
@pytest.mark.parametrize("region", ["enc", "ciphertext", "signature"])
async def test_any_flipped_byte_is_refused(tmp_path: Path, suite: HpkeSuite, region: str) -> None:
    world = make_world(tmp_path, suite)
    box, given = world.seal()
    data: bytes = getattr(box, region)
    for at in sorted({0, 1, len(data) // 2, len(data) - 2, len(data) - 1}):
        tampered = box.model_copy(update={region: flip(data, at)})
        await refused(world, RejectionReason.BAD_SIGNATURE, tampered, given)
    # A signature of another length is no Ed25519 signature at all.
    cut_reason = (
        RejectionReason.MISSING_SIGNATURE
        if region == "signature"
        else RejectionReason.BAD_SIGNATURE
    )
    for cut in (data[:-1], data + b"\0"):
        await refused(world, cut_reason, box.model_copy(update={region: cut}), given)
    assert await world.open(box, given) == PLAINTEXT  # the original still opens


async def test_bytes_moved_between_enc_and_ciphertext_are_refused(world: World) -> None:
    box, given = world.seal()
    moved = box.model_copy(
        update={"enc": box.enc[:-1], "ciphertext": box.enc[-1:] + box.ciphertext}
    )
    await refused(world, RejectionReason.BAD_SIGNATURE, moved, given)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("sender", "mallory"),
        ("message_id", "0195a1b2-ffff-7e5f-8a9b-0c1d2e3f4a5b"),
        ("sealed_at", NOW + timedelta(seconds=1)),
    ],
)
async def test_a_registered_agent_resigning_someone_elses_box_cannot_open_it(
    tmp_path: Path, world: World, field: str, value: object
) -> None:
    """Mallory, registered in the tenant, takes dev's box, puts her name (or another
    event id or time) in and signs it herself: the signature is valid now, but HPKE
    was bound to dev's envelope, so the box does not open."""
    mallory = AgentIdentity.load_or_create(tmp_path / "mallory.json", "mallory")
    world.directory.add(
        dataclasses.replace(published_key(mallory, REGISTERED), key_id="mallory-key")
    )
    box, given = world.seal()
    forged = box.model_copy(
        update={"sender": "mallory", "sender_key_id": "mallory-key", field: value}
    )
    assert forged.sealed_at is not None and forged.message_id is not None
    binding = Binding(
        tenant_id=TENANT,
        message_id=forged.message_id,
        purpose=given.purpose,
        correlation_id=given.correlation_id,
        sealed_at=forged.sealed_at,
        sender=forged.sender,
        recipient=forged.recipient,
        sender_key_id=forged.sender_key_id,
        recipient_key_id=forged.recipient_key_id,
        suite=forged.suite,
    )
    resigned = forged.model_copy(
        update={
            "signature": mallory.signing_key.sign(binding.signed_bytes(box.enc, box.ciphertext))
        }
    )
    carried = dataclasses.replace(given, message_id=forged.message_id)
    await refused(world, RejectionReason.UNDECRYPTABLE, resigned, carried)


# ---------------------------------------------------------------------------- encoding


BASE = Binding(
    tenant_id="acme",
    message_id="m-1",
    purpose="agent.message",
    correlation_id="corr",
    sealed_at=NOW,
    sender="dev",
    recipient="qa",
    sender_key_id="k1",
    recipient_key_id="k2",
    suite=X25519,
)


def test_the_canonical_binding_has_a_domain_prefix_and_changes_with_every_field() -> None:
    assert BASE.canonical().startswith(b"ledgerbus-sealed-v1\0")
    assert BASE.canonical() == dataclasses.replace(BASE).canonical()
    changed = {
        "tenant_id": "acme2",
        "message_id": "m-2",
        "purpose": "agent.handoff",
        "correlation_id": None,
        "sealed_at": NOW + timedelta(microseconds=1),
        "sender": "dev2",
        "recipient": "qa2",
        "sender_key_id": "k3",
        "recipient_key_id": "k4",
        "suite": HYBRID,
    }
    assert changed.keys() == {f.name for f in dataclasses.fields(Binding)}
    encodings = {BASE.canonical()} | {
        dataclasses.replace(BASE, **{name: value}).canonical()  # type: ignore[arg-type]
        for name, value in changed.items()
    }
    assert len(encodings) == len(changed) + 1


def test_moving_text_between_fields_changes_the_encoding() -> None:
    shifted = dataclasses.replace(BASE, sender="devq", recipient="a")
    split = dataclasses.replace(BASE, sender="de", recipient="vqa")
    assert len({BASE.canonical(), shifted.canonical(), split.canonical()}) == 3
    empty = dataclasses.replace(BASE, correlation_id="")
    assert empty.canonical() != dataclasses.replace(BASE, correlation_id=None).canonical()


def test_equal_instants_in_other_time_zones_encode_alike() -> None:
    east = NOW.astimezone(timezone(timedelta(hours=2)))
    assert dataclasses.replace(BASE, sealed_at=east).canonical() == BASE.canonical()


# ---------------------------------------------------------------------------- bad input


def test_sealing_refuses_bad_input(world: World) -> None:
    key = world.directory.keys[(TENANT, "qa", world.recipient.key_id)]
    naive = NOW.replace(tzinfo=None)
    with pytest.raises(ValueError, match="timezone-aware"):
        world.seal(sealed_at=naive)
    with pytest.raises(ValueError, match="is revoked"):
        world.seal(to=dataclasses.replace(key, revoked_at=NOW))
    with pytest.raises(ValueError, match="suite 'unknown'"):
        world.seal(to=dataclasses.replace(key, suite="unknown"))
    with pytest.raises(ValueError, match="32 bytes"):
        world.seal(to=dataclasses.replace(key, hpke_public_key=b"short"))
