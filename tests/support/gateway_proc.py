"""The gateway in its own OS process, plus ``POST /bare`` that only parses the body.

For benchmarks: a load generator in the gateway's own event loop would compete
with it for the one core a Python process uses, and measure itself. Both
routes are served by the same app and uvicorn server, so they share every
middleware and differ only in what the route does.

Usage: python -m tests.support.gateway_proc ENDPOINTS_JSON
(gateway settings from ``LEDGERBUS_*``). Prints the base URL once listening;
SIGTERM stops it.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
from typing import Any

import asyncpg
import uvicorn
from fastapi import Body

from gateway.app import create_app
from gateway.services import GatewayEndpoints, open_services
from gateway.settings import load_gateway_settings
from schemas.catalog import default_catalog
from tests.support.gateway import listening


async def main(endpoints: GatewayEndpoints) -> None:
    pool = await asyncpg.create_pool(endpoints.database_url, min_size=2, max_size=20)
    try:
        async with open_services(
            endpoints, default_catalog(), load_gateway_settings(), pool=pool
        ) as services:
            app = create_app((), services=services)

            @app.post("/bare", status_code=202)
            async def bare(body: dict[str, Any] = Body()) -> dict[str, int]:  # noqa: B008
                return {"fields": len(body)}

            server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
            gc.freeze()  # as ledgerbus/gateway_process.py does after start-up
            with listening() as sock:
                print(f"http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
                await server.serve(sockets=[sock])
    finally:
        await pool.close()


if __name__ == "__main__":
    asyncio.run(main(GatewayEndpoints(**json.loads(sys.argv[1]))))
