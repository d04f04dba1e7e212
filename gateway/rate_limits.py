"""Per-key and per-tenant request limits in Redis (the `limits` library).

Each API key (or JWT subject) has an hourly allowance set by its tier, and each
tenant one for all its keys together, so a tenant cannot multiply its quota by
minting keys. The sliding-window counter is atomic in Redis, so every gateway
process shares the same buckets. When Redis does not answer, the gateway either
serves unlimited (fail open) or refuses with 503 (fail closed), by setting.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from limits import RateLimitItemPerHour
from limits.aio.storage import RedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import StorageError
from prometheus_client import Counter
from redis.exceptions import RedisError

from gateway.auth.principal import Principal
from gateway.settings import GatewaySettings

LIMITED = Counter(
    "ledgerbus_rate_limited_total", "Requests refused with 429, by bucket", ["bucket"]
)
UNCHECKED = Counter(
    "ledgerbus_rate_limit_unavailable_total",
    "Requests whose limit could not be checked because Redis did not answer",
)


class RateLimitUnavailable(RuntimeError):
    """Redis did not answer and the gateway is set to fail closed."""


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    #: Which bucket decided: "key", "tenant", or "" when nothing was counted.
    bucket: str = ""
    limit: int | None = None
    remaining: int | None = None
    reset_seconds: int | None = None

    def headers(self) -> dict[str, str]:
        """``RateLimit-*`` (IETF draft) and, when refused, ``Retry-After``."""
        if self.limit is None or self.remaining is None or self.reset_seconds is None:
            return {}
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_seconds),
        }
        if not self.allowed:
            headers["Retry-After"] = str(max(1, self.reset_seconds))
        return headers


UNLIMITED = RateDecision(allowed=True)


class RateLimiter:
    def __init__(self, redis_url: str, settings: GatewaySettings) -> None:
        self.settings = settings
        self.storage = RedisStorage(
            f"async+{redis_url}",
            implementation="redispy",
            key_prefix=f"{settings.redis_key_prefix}ratelimit",
            wrap_exceptions=True,
            socket_timeout=0.5,
            socket_connect_timeout=0.5,
        )
        self.strategy = SlidingWindowCounterRateLimiter(self.storage)

    @property
    def mode(self) -> str:
        return "fail_open" if self.settings.rate_limit_fail_open else "fail_closed"

    def key_limit(self, tier: str) -> int | None:
        tiers = self.settings.rate_limit_tiers
        return tiers.get(tier, tiers.get(self.settings.rate_limit_default_tier))

    async def check(self, principal: Principal) -> RateDecision:
        """Count one request against the tenant's and the key's buckets."""
        try:
            return await self._check(principal)
        except (StorageError, RedisError, OSError) as exc:
            UNCHECKED.inc()
            if self.settings.rate_limit_fail_open:
                return UNLIMITED
            raise RateLimitUnavailable(f"rate limits cannot be checked: {exc}") from None

    async def _check(self, principal: Principal) -> RateDecision:
        tenant_limit = self.settings.rate_limit_tenant_per_hour
        if tenant_limit is not None:
            tenant_item = RateLimitItemPerHour(tenant_limit)
            if not await self.strategy.hit(tenant_item, "tenant", principal.tenant_id):
                LIMITED.labels("tenant").inc()
                return await self._decision(False, "tenant", tenant_item, principal.tenant_id)
        key_limit = self.key_limit(principal.tier)
        if key_limit is None:
            return UNLIMITED
        key_item = RateLimitItemPerHour(key_limit)
        allowed = await self.strategy.hit(key_item, "key", principal.key_id)
        if not allowed:
            LIMITED.labels("key").inc()
        return await self._decision(allowed, "key", key_item, principal.key_id)

    async def _decision(
        self, allowed: bool, bucket: str, item: RateLimitItemPerHour, identifier: str
    ) -> RateDecision:
        stats = await self.strategy.get_window_stats(item, bucket, identifier)
        reset = max(0, math.ceil(stats.reset_time - time.time()))
        return RateDecision(allowed, bucket, item.amount, stats.remaining, reset)

    async def probe(self) -> None:
        """For ``/readyz``: raises when Redis does not answer."""
        if not await self.storage.check():
            raise RateLimitUnavailable(f"redis does not answer ({self.mode})")
