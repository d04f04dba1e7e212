"""Process settings, read from ``LEDGERBUS_*`` environment variables.

Each external endpoint that is set replaces its embedded piece; the ones left
unset are started by ``ledgerbus dev`` from the wheels (see ``ledgerbus.embedded``).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "LEDGERBUS_"


class SettingsError(ValueError):
    """A setting has a bad value; the message names the environment variable."""


def _check_host_port(value: str, what: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{what} {value!r} is not host:port")


class Settings(BaseSettings):
    """Everything a ledgerbus process needs to find its peers."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    kafka_bootstrap: str | None = Field(
        None, description="Kafka bootstrap servers, host:port[,host:port]; unset = embedded Tansu"
    )
    database_url: str | None = Field(
        None, description="PostgreSQL URL (postgresql://…); unset = embedded PostgreSQL"
    )
    redis_url: str | None = Field(None, description="Redis URL (redis://…); unset = embedded Redis")
    schema_registry_url: str | None = Field(
        None, description="Confluent-compatible schema registry; unset = served by ledgerbus"
    )
    topic_prefix: str = Field(
        "", pattern=r"^[A-Za-z0-9._-]*$", description="Prefix of every Kafka topic name"
    )
    serve_schema_registry: bool = Field(
        False, description="Gateway serves the Confluent-compatible registry at /registry"
    )
    schema_dirs: list[Path] = Field(
        default_factory=list, description="Extra folders of custom event .avsc files"
    )
    data_dir: Path = Field(Path(".ledgerbus"), description="Embedded servers' data, logs, keys")
    gateway_host: str = Field("127.0.0.1", description="Address the HTTP gateway listens on")
    gateway_port: int = Field(8000, ge=0, lt=65536, description="Gateway port; 0 = any free port")
    kafka_port: int = Field(0, ge=0, lt=65536, description="Embedded Kafka port; 0 = any free")
    postgres_port: int = Field(0, ge=0, lt=65536, description="Embedded PostgreSQL port; 0 = any")
    redis_port: int = Field(0, ge=0, lt=65536, description="Embedded Redis port; 0 = any free")
    metrics_port: int = Field(
        0, ge=0, lt=65536, description="Supervisor's Prometheus port; 0 = any free"
    )
    session_timeout: float = Field(
        6.0,
        ge=1.0,
        le=300.0,
        description="Seconds before a consumer group gives a silent member's partitions to "
        "another (archiver, agents, streams workers)",
    )

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap(cls, value: str | None) -> str | None:
        if value is not None:
            for server in value.split(","):
                _check_host_port(server.strip(), "bootstrap server")
        return value

    @field_validator("database_url")
    @classmethod
    def _database(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("postgres", "postgresql") or not (
                parts.hostname or parts.query
            ):
                raise ValueError(f"{value!r} is not a postgresql://host/db URL")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("redis", "rediss", "unix") or not (
                parts.hostname or parts.path
            ):
                raise ValueError(f"{value!r} is not a redis://host:port URL")
        return value

    @field_validator("schema_registry_url")
    @classmethod
    def _registry(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"{value!r} is not an http(s):// URL")
        return value


def load_settings(**overrides: object) -> Settings:
    """Read settings, turning pydantic's report into one line per bad variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"])
            message = error["msg"].removeprefix("Value error, ")
            lines.append(f"{ENV_PREFIX}{field.upper()}: {message}")
        raise SettingsError("\n".join(lines)) from None
