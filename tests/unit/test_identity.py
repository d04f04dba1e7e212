"""Agent keyrings: private to the owner, kept across restarts, rotated without losing old keys."""

from __future__ import annotations

import base64
import json
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import x25519

from consumers.identity import MLKEM768_PUBLIC_BYTES, AgentIdentity, KeyringError
from gateway.routes.agents import NewAgent
from producers.publisher import build_event
from schemas.catalog import default_catalog
from schemas.models.enums import HpkeSuite

CATALOG = default_catalog()
X25519 = HpkeSuite.X25519_SHA256_CHACHA20POLY1305
HYBRID = HpkeSuite.MLKEM768X25519_SHA256_CHACHA20POLY1305


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_keyring_is_private_to_its_owner(tmp_path: Path) -> None:
    path = tmp_path / "agents" / "qa.json"
    identity = AgentIdentity.load_or_create(path, "qa")
    assert (mode(path), mode(path.parent)) == (0o600, 0o700)
    assert identity.key_id.startswith("k_") and len(identity.key_id) == 18
    assert [p.name for p in path.parent.iterdir()] == ["qa.json"]  # no scratch file left


@pytest.mark.parametrize("suite", [X25519, HYBRID])
def test_the_same_keys_come_back_after_a_restart(tmp_path: Path, suite: HpkeSuite) -> None:
    path = tmp_path / "qa.json"
    first = AgentIdentity.load_or_create(path, "qa", suite)
    again = AgentIdentity.load_or_create(path, "qa", suite)
    assert again.key_id == first.key_id
    assert again.suite == suite
    assert again.registration(timedelta(0)) == first.registration(timedelta(0))


@pytest.mark.parametrize("suite", [X25519, HYBRID])
def test_the_registration_is_a_valid_agent_registered_payload(
    tmp_path: Path, suite: HpkeSuite
) -> None:
    identity = AgentIdentity.load_or_create(tmp_path / "dev.json", "dev", suite)
    data = identity.registration(timedelta(hours=1))
    event = build_event(
        CATALOG.get("agent.registered"), subject="dev", tenant_id="t", data=data, source="test"
    )
    assert (event.data.agent_name, event.data.key_id, event.data.suite) == (
        "dev",
        identity.key_id,
        suite,
    )
    assert event.data.previous_key_id is None
    hpke_bytes = 32 if suite == X25519 else MLKEM768_PUBLIC_BYTES + 32
    assert len(event.data.hpke_public_key) == hpke_bytes
    # The gateway checks the key layout (curve points, ML-KEM then X25519) the same way.
    NewAgent.model_validate(
        {
            "agent_name": "dev",
            "suite": suite.value,
            "signing_public_key": _b64(data["signing_public_key"]),
            "hpke_public_key": _b64(data["hpke_public_key"]),
        }
    )


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def test_rotation_keeps_the_old_private_keys_and_names_the_previous_key(tmp_path: Path) -> None:
    path = tmp_path / "qa.json"
    identity = AgentIdentity.load_or_create(path, "qa")
    old_id, old_key = identity.key_id, identity.hpke_key
    before = datetime.now(UTC)
    new_id = identity.rotate()
    assert new_id == identity.key_id != old_id
    data = identity.registration(timedelta(hours=2))
    assert data["previous_key_id"] == old_id
    assert before + timedelta(hours=2) <= data["previous_key_valid_until"]
    assert data["previous_key_valid_until"] <= datetime.now(UTC) + timedelta(hours=2)
    reloaded = AgentIdentity.load_or_create(path, "qa")
    assert reloaded.key_id == new_id
    assert reloaded.registration(timedelta(hours=2)) == data
    old = reloaded.hpke_private_key(old_id)
    assert old is not None and _raw(old) == _raw(old_key)
    assert reloaded.hpke_private_key("k_never") is None
    assert mode(path) == 0o600


def _raw(key: object) -> bytes:
    assert isinstance(key, x25519.X25519PrivateKey)
    return key.private_bytes_raw()


def test_rotation_may_change_the_suite(tmp_path: Path) -> None:
    path = tmp_path / "qa.json"
    identity = AgentIdentity.load_or_create(path, "qa")
    old_id = identity.key_id
    identity.rotate(HYBRID)
    assert (identity.suite, identity.key_suite(old_id)) == (HYBRID, X25519)
    assert AgentIdentity.load_or_create(path, "qa", HYBRID).key_id == identity.key_id


@pytest.mark.parametrize("loose", [0o640, 0o604, 0o660, 0o620])
def test_a_keyring_others_can_read_or_write_is_refused(tmp_path: Path, loose: int) -> None:
    path = tmp_path / "qa.json"
    AgentIdentity.load_or_create(path, "qa")
    before = path.read_bytes()
    path.chmod(loose)
    with pytest.raises(KeyringError, match=rf"readable or writable by others \(mode 0{loose:o}\)"):
        AgentIdentity.load_or_create(path, "qa")
    assert path.read_bytes() == before and mode(path) == loose  # left as found


def test_another_agents_keyring_or_suite_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "qa.json"
    AgentIdentity.load_or_create(path, "qa")
    with pytest.raises(KeyringError, match="keyring of 'qa', not 'dev'"):
        AgentIdentity.load_or_create(path, "dev")
    with pytest.raises(KeyringError, match="holds x25519_sha256_chacha20poly1305 keys"):
        AgentIdentity.load_or_create(path, "qa", HYBRID)


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        json.dumps({"version": 2, "agent_name": "qa", "keys": []}),
        json.dumps({"version": 1, "agent_name": "qa", "keys": []}),
        json.dumps({"version": 1, "agent_name": "qa", "keys": [{"key_id": "k"}]}),
    ],
)
def test_a_damaged_keyring_is_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "qa.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, text.encode())
    os.close(fd)
    with pytest.raises(KeyringError, match=r"qa\.json (is not a readable keyring|holds no keys)"):
        AgentIdentity.load_or_create(path, "qa")
    assert path.read_text() == text


def test_processes_creating_it_at_once_end_with_one_identity(tmp_path: Path) -> None:
    """Losers of the race read the winner's keys instead of overwriting them."""
    path = tmp_path / "qa.json"
    with ThreadPoolExecutor(16) as pool:
        made = list(pool.map(lambda _: AgentIdentity.load_or_create(path, "qa"), range(16)))
    assert {identity.key_id for identity in made} == {
        AgentIdentity.load_or_create(path, "qa").key_id
    }
