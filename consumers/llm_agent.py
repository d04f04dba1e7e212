"""Agents defined in YAML and driven by an LLM: the built-in workforce.

A definition names the agent and describes it (role, goal, backstory, tools,
LLM provider and model); two optional keys make it part of a workflow:
``requires_approval`` (an action a person must approve before the agent
finishes) and ``hands_off_to`` (the agent that gets the work next). The
built-in definitions live in ``consumers/builtin_agents``; ``--config FILE``
loads any other.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from consumers.agent import Agent, AgentRegistry, AgentResult, AgentTask
from schemas.models.enums import RiskLevel

NAME_PATTERN = r"^[a-z][a-z0-9-]{0,62}$"


class DefinitionError(ValueError):
    """An agent definition file is unreadable or invalid; the message names the file."""


class LLMChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    provider: str
    model: str


class ApprovalStep(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: str = Field(min_length=1)
    risk: RiskLevel = RiskLevel.HIGH


class AgentDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    title: str
    role: str
    goal: str
    backstory: str
    tools: list[str] = []
    llm: LLMChoice
    requires_approval: ApprovalStep | None = None
    hands_off_to: str | None = Field(None, pattern=NAME_PATTERN)

    @classmethod
    def load(cls, path: Path) -> AgentDefinition:
        try:
            raw: Any = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise DefinitionError(f"{path}: {exc}") from None
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, error['loc'])) or '(top)'}: {error['msg']}"
                for error in exc.errors()
            )
            raise DefinitionError(f"{path}: invalid agent definition: {problems}") from None

    def system_prompt(self) -> str:
        tools = ", ".join(self.tools) or "none"
        return (
            f"You are {self.title}, {self.role}. Goal: {self.goal}\n"
            f"Background: {self.backstory.strip()}\nTools you may describe using: {tools}."
        )


def builtin_definitions() -> dict[str, AgentDefinition]:
    """The definitions shipped in ``consumers/builtin_agents``, by agent name."""
    found: dict[str, AgentDefinition] = {}
    for entry in resources.files("consumers.builtin_agents").iterdir():
        if entry.name.endswith(".yaml"):
            with resources.as_file(entry) as path:
                definition = AgentDefinition.load(path)
            found[definition.name] = definition
    return found


class LLMAgent(Agent):
    """Asks the LLM to do the task in the definition's role, then, as defined,
    asks for approval and hands the work on."""

    def __init__(self, name: str, definition: AgentDefinition) -> None:
        super().__init__(name)
        self.definition = definition
        self.model = definition.llm.model

    async def handle(self, task: AgentTask) -> AgentResult:
        definition = self.definition
        prompt = task.task if task.instructions is None else task.instructions
        if task.context:
            prompt += "\n\nContext: " + ", ".join(f"{k}={v}" for k, v in task.context.items())
        reply = await self.complete(
            [
                {"role": "system", "content": definition.system_prompt()},
                {"role": "user", "content": prompt},
            ]
        )
        if definition.requires_approval is not None:
            await self.request_approval(
                action=definition.requires_approval.action,
                risk=definition.requires_approval.risk,
                details=reply[:500],
            )
        handed_to: dict[str, str] = {}
        if definition.hands_off_to is not None:
            handed_to[definition.hands_off_to] = await self.handoff(
                definition.hands_off_to,
                instructions=f"Review and test the work of {definition.title}: {prompt}",
                context={"from_run": task.run_id, "summary": reply[:2000]},
            )
        return AgentResult(output=reply, data={"handoffs": handed_to})


@dataclass(frozen=True)
class _Defined:
    definition: AgentDefinition

    def __call__(self, name: str) -> Agent:
        return LLMAgent(name, self.definition)


def register_builtin(registry: AgentRegistry) -> None:
    """Add every built-in agent to ``registry``."""
    for name, definition in builtin_definitions().items():
        registry.register(name, _Defined(definition))


def agent_from_file(path: Path) -> Agent:
    definition = AgentDefinition.load(path)
    return LLMAgent(definition.name, definition)
