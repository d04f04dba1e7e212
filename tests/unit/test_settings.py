from __future__ import annotations

from pathlib import Path

import pytest

from ledgerbus.embedded.stack import infrastructure
from ledgerbus.settings import SettingsError, load_settings


def test_defaults_are_all_embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "KAFKA_BOOTSTRAP",
        "DATABASE_URL",
        "REDIS_URL",
        "SCHEMA_REGISTRY_URL",
        "SESSION_TIMEOUT",  # tests/conftest.py sets it
    ):
        monkeypatch.delenv(f"LEDGERBUS_{name}", raising=False)
    settings = load_settings()
    assert settings.kafka_bootstrap is None
    assert settings.database_url is None
    assert settings.data_dir == Path(".ledgerbus")
    assert settings.gateway_port == 8000
    assert settings.session_timeout == 6.0


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LEDGERBUS_KAFKA_BOOTSTRAP", "k1:9092,k2:9092")
    monkeypatch.setenv("LEDGERBUS_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("LEDGERBUS_SESSION_TIMEOUT", "2.5")
    settings = load_settings()
    assert settings.kafka_bootstrap == "k1:9092,k2:9092"
    assert settings.data_dir == tmp_path
    assert settings.session_timeout == 2.5


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("kafka_bootstrap", "nohostport", "LEDGERBUS_KAFKA_BOOTSTRAP: bootstrap server"),
        ("kafka_bootstrap", "host:99999", "LEDGERBUS_KAFKA_BOOTSTRAP: bootstrap server"),
        ("database_url", "mysql://db/x", "LEDGERBUS_DATABASE_URL: 'mysql://db/x' is not"),
        ("redis_url", "redis//broken", "LEDGERBUS_REDIS_URL:"),
        ("schema_registry_url", "ftp://r", "LEDGERBUS_SCHEMA_REGISTRY_URL:"),
        ("gateway_port", -1, "LEDGERBUS_GATEWAY_PORT:"),
        ("session_timeout", 0.5, "LEDGERBUS_SESSION_TIMEOUT: Input should be greater than or"),
        ("session_timeout", "soon", "LEDGERBUS_SESSION_TIMEOUT: Input should be a valid number"),
    ],
)
def test_bad_values_name_the_variable(field: str, value: object, message: str) -> None:
    with pytest.raises(SettingsError) as error:
        load_settings(**{field: value})
    assert str(error.value).startswith(message)


def test_each_external_endpoint_replaces_only_its_piece(tmp_path: Path) -> None:
    settings = load_settings(
        data_dir=tmp_path, database_url="postgresql://db.example:5432/ledgerbus"
    )
    services, endpoints = infrastructure(settings)
    kinds = {service.name: type(service).__name__ for service in services}
    assert kinds == {
        "kafka": "ProcessService",
        "postgres": "ExternalService",
        "redis": "ProcessService",
    }
    assert endpoints.database_url == "postgresql://db.example:5432/ledgerbus"
    assert endpoints.kafka_bootstrap.startswith("127.0.0.1:")
    assert endpoints.as_env()["LEDGERBUS_DATABASE_URL"] == endpoints.database_url
