"""``ledgerbus llm-stub``: the local OpenAI-compatible stub as a process of its own.

``ledgerbus dev --with-agents`` and ``ledgerbus demo`` start it when no LLM is
configured, so agents run end to end (real ``openai`` client, real cost
records) without a network or an API key.
"""

from __future__ import annotations

import asyncio

import click

from ledgerbus.commands.common import clear_errors
from ledgerbus.commands.service import stop_on_signals
from ledgerbus.embedded.ports import claim_port


@click.command("llm-stub")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=0,
    show_default=True,
    help="Port to listen on; 0 = any free port (printed).",
)
@clear_errors(OSError)
def llm_stub(host: str, port: int) -> None:
    """Serve a deterministic OpenAI-compatible chat endpoint (model stub-model) until SIGTERM."""
    if port:
        claim_port(port, setting="--port", host=host)
    asyncio.run(_serve(host, port))


async def _serve(host: str, port: int) -> None:
    from ledgerbus.llm_stub import serve  # uvicorn and starlette: only when serving

    stop = asyncio.Event()
    stop_on_signals(stop.set)
    async with serve(host, port) as served:
        click.echo(f"LLM stub (OpenAI-compatible) serving {served.url}")
        await stop.wait()
