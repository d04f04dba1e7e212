"""The gateway's own settings (``LEDGERBUS_*``): auth, limits and stream buffers."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict


class GatewaySettingsError(ValueError):
    """A gateway setting has a bad value; the message names the variable."""


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LEDGERBUS_", extra="ignore")

    jwt_secret: SecretStr | None = Field(None, description="HS256 secret for JWT bearer tokens")
    jwt_public_key_file: Path | None = Field(
        None, description="PEM public key for RS256/ES256/EdDSA JWTs"
    )
    jwt_jwks_file: Path | None = Field(None, description="JWKS file of JWT verification keys")
    jwt_audience: str = Field("ledgerbus", description="Required `aud` claim of JWTs")
    jwt_issuer: str | None = Field(None, description="Required `iss` claim, if set")
    jwt_leeway_seconds: int = Field(5, ge=0, le=300, description="Clock skew allowed on exp/nbf")

    max_body_bytes: int = Field(1 << 20, ge=1024, description="Largest request body accepted")
    max_batch_events: int = Field(1000, ge=1, description="Most events in one POST /v1/events")

    rate_limit_tiers: dict[str, int | None] = Field(
        default_factory=lambda: {"free": 100, "developer": 1000, "enterprise": None},
        description="Requests per hour per API key, by tier; null = unlimited",
    )
    rate_limit_default_tier: str = Field(
        "developer", description="Tier of keys and JWTs without one"
    )
    rate_limit_tenant_per_hour: int | None = Field(
        10_000, ge=1, description="Requests per hour per tenant, all its keys together; null = none"
    )
    rate_limit_fail_open: bool = Field(
        True, description="Serve requests when Redis is down (false = answer 503)"
    )
    redis_key_prefix: str = Field("ledgerbus:", description="Prefix of every gateway Redis key")

    idempotency_ttl_seconds: int = Field(24 * 3600, ge=60, description="How long keys are kept")
    approval_wait_seconds: float = Field(
        3.0, ge=0, le=30, description="How long approve/deny wait for the verdict"
    )
    stream_buffer_events: int = Field(
        1000, ge=10, description="Events queued per subscriber before it is dropped"
    )
    stream_heartbeat_seconds: float = Field(15.0, gt=0, description="Idle keep-alive interval")
    stream_ring_events: int = Field(
        10_000, ge=0, description="Recent live events kept for resuming by event id (0 = none)"
    )
    stream_resume_wait_seconds: float = Field(
        3.0, ge=0, le=30, description="How long a resume waits for its event to be archived"
    )

    data_dir: Path = Field(Path(".ledgerbus"), description="Data folder, as for the CLI")
    audit_key_path: Path | None = Field(
        None,
        description="Audit Ed25519 key PEM (private or public) that checkpoints are checked "
        "with; default <data_dir>/keys/audit_ed25519.pem, like `ledgerbus audit`",
    )


def load_gateway_settings(**overrides: object) -> GatewaySettings:
    try:
        return GatewaySettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"])
            lines.append(f"LEDGERBUS_{field.upper()}: {error['msg'].removeprefix('Value error, ')}")
        raise GatewaySettingsError("\n".join(lines)) from None
