"""The bootstrap admin API key ``ledgerbus dev`` prints, so a new user can call the API at once.

Made on first start for the ``default`` tenant and kept in ``<data_dir>/admin-api-key``
(mode 0600) so later starts print the same key; a revoked or deleted one is replaced.
"""

from __future__ import annotations

import os
from pathlib import Path

import asyncpg

from event_store.migrate import migrate
from gateway.auth.api_keys import ApiKeyStore, KeyRejected

TENANT = "default"


def key_file(data_dir: Path) -> Path:
    return data_dir / "admin-api-key"


async def ensure_admin_key(database_url: str, data_dir: Path, tier: str) -> str:
    path = key_file(data_dir)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    try:
        await migrate(pool)
        store = ApiKeyStore(pool)
        if path.exists():
            token = path.read_text().strip()
            try:
                await store.authenticate(token)
                return token
            except KeyRejected:
                pass
        created = await store.create(
            tenant_id=TENANT, role="admin", tier=tier, name="bootstrap admin (ledgerbus dev)"
        )
    finally:
        await pool.close()
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(created.token + "\n")
    return created.token
