"""The servers ledgerbus needs: embedded from wheels unless configured externally."""

from __future__ import annotations

from dataclasses import dataclass

from ledgerbus.embedded.kafka import embedded_kafka
from ledgerbus.embedded.ports import claim_port
from ledgerbus.embedded.postgres import EmbeddedPostgres
from ledgerbus.embedded.redis import embedded_redis
from ledgerbus.embedded.service import ExternalService
from ledgerbus.probes import kafka_probe, postgres_probe, redis_probe
from ledgerbus.settings import Settings
from ledgerbus.supervisor import Service


@dataclass(frozen=True)
class Endpoints:
    """Where every ledgerbus process finds the shared servers."""

    kafka_bootstrap: str
    database_url: str
    redis_url: str
    schema_registry_url: str | None = None

    def as_env(self) -> dict[str, str]:
        """The settings a child ledgerbus process needs to use the same servers."""
        env = {
            "LEDGERBUS_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
            "LEDGERBUS_DATABASE_URL": self.database_url,
            "LEDGERBUS_REDIS_URL": self.redis_url,
        }
        if self.schema_registry_url:
            env["LEDGERBUS_SCHEMA_REGISTRY_URL"] = self.schema_registry_url
        return env


def infrastructure(settings: Settings) -> tuple[list[Service], Endpoints]:
    """One service per server: an embedded child, or a probe of the external one."""
    data_dir = settings.data_dir.resolve()
    logs = data_dir / "logs"
    services: list[Service] = []

    if settings.kafka_bootstrap:
        kafka: Service = ExternalService(
            "kafka", settings.kafka_bootstrap, kafka_probe(settings.kafka_bootstrap)
        )
    else:
        kafka = embedded_kafka(
            claim_port(settings.kafka_port, setting="LEDGERBUS_KAFKA_PORT"), logs
        )
    services.append(kafka)

    if settings.database_url:
        postgres: Service = ExternalService(
            "postgres", settings.database_url, postgres_probe(settings.database_url)
        )
    else:
        port = claim_port(settings.postgres_port, setting="LEDGERBUS_POSTGRES_PORT")
        postgres = EmbeddedPostgres(port, data_dir / "postgres", logs)
    services.append(postgres)

    if settings.redis_url:
        redis: Service = ExternalService(
            "redis", settings.redis_url, redis_probe(settings.redis_url)
        )
    else:
        port = claim_port(settings.redis_port, setting="LEDGERBUS_REDIS_PORT")
        redis = embedded_redis(port, data_dir / "redis", logs)
    services.append(redis)

    endpoints = Endpoints(
        kafka_bootstrap=kafka.endpoint,
        database_url=postgres.endpoint,
        redis_url=redis.endpoint,
        schema_registry_url=settings.schema_registry_url,
    )
    return services, endpoints
