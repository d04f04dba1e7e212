"""``ledgerbus agent``: run agents as processes of their own."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import click

from consumers.agent import Agent, agent_registry
from consumers.identity import KeyringError
from consumers.llm_agent import DefinitionError, agent_from_file, register_builtin
from ledgerbus.commands.common import clear_errors, settings
from ledgerbus.commands.service import check_metrics_port, metrics_options
from schemas.models.enums import HpkeSuite

SUITES = {
    "x25519": HpkeSuite.X25519_SHA256_CHACHA20POLY1305,
    "mlkem768-x25519": HpkeSuite.MLKEM768X25519_SHA256_CHACHA20POLY1305,
}


@click.group()
def agent() -> None:
    """Run agents: each one a process that only talks through the bus."""


@agent.command("list")
def list_agents() -> None:
    """The agents `agent run` knows (built-in YAML agents and registered classes)."""
    _ensure_builtin()
    for name in agent_registry.names():
        click.echo(name)


@agent.command("run")
@click.argument("name")
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="YAML agent definition to run instead of a built-in or registered agent.",
)
@click.option("--tenant", default="default", show_default=True, help="Tenant the agent works for.")
@click.option(
    "--suite",
    type=click.Choice(sorted(SUITES)),
    default="x25519",
    show_default=True,
    help="HPKE suite of the agent's keys (mlkem768-x25519 = hybrid post-quantum).",
)
@click.option("--heartbeat-seconds", type=click.FloatRange(min=0.5), default=5.0, show_default=True)
@metrics_options
@clear_errors(DefinitionError, KeyringError, LookupError, asyncpg.PostgresError, OSError)
def run(
    name: str,
    config_file: Path | None,
    tenant: str,
    suite: str,
    heartbeat_seconds: float,
    metrics_port: int,
    metrics_host: str,
) -> None:
    """Run agent NAME until SIGTERM/SIGINT; start more processes to share its runs."""
    from ledgerbus.agent_process import AgentOptions, run_agent  # openai, crypto: slow imports

    config = settings()
    check_metrics_port(metrics_port, metrics_host)
    instance = _agent(name, config_file)
    options = AgentOptions(tenant, metrics_host, metrics_port, SUITES[suite], heartbeat_seconds)
    asyncio.run(run_agent(config, instance, options))


def _agent(name: str, config_file: Path | None) -> Agent:
    if config_file is not None:
        defined = agent_from_file(config_file)
        if defined.name != name:
            raise DefinitionError(f"{config_file} defines agent {defined.name!r}, not {name!r}")
        return defined
    _ensure_builtin()
    return agent_registry.create(name)


def _ensure_builtin() -> None:
    if "developer" not in agent_registry:
        register_builtin(agent_registry)
