"""Agent definitions (YAML) and ``ledgerbus agent``: bad input is refused with the file
and field named, before anything connects to the bus."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from consumers.llm_agent import AgentDefinition, DefinitionError, builtin_definitions

BUILTIN = {"developer", "qa-tester", "devops-engineer", "ux-designer", "security-auditor"}


def ledgerbus(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ledgerbus", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).parents[2])},
    )


def test_the_builtin_agents_are_the_seed_roles_and_form_a_workflow() -> None:
    definitions = builtin_definitions()
    assert set(definitions) == BUILTIN
    assert definitions["developer"].hands_off_to == "qa-tester"
    approval = definitions["qa-tester"].requires_approval
    assert approval is not None and approval.risk == "high"
    assert "pytest_generator" in definitions["qa-tester"].tools
    assert "Quality Assurance Engineer" in definitions["qa-tester"].system_prompt()


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("name: Bad Name\n", "name"),
        ("name: ok\ntitle: t\nrole: r\ngoal: g\nbackstory: b\n", "llm"),
        (
            "name: ok\ntitle: t\nrole: r\ngoal: g\nbackstory: b\n"
            "llm: {provider: p, model: m}\nrequires_approval: {action: a, risk: extreme}\n",
            "requires_approval.risk",
        ),
        (
            "name: ok\ntitle: t\nrole: r\ngoal: g\nbackstory: b\nllm: {provider: p, model: m}\n"
            "surprise: 1\n",
            "surprise",
        ),
        ("name: [unclosed\n", "flow sequence"),
    ],
)
def test_an_invalid_definition_names_the_file_and_the_field(
    tmp_path: Path, text: str, named: str
) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    with pytest.raises(DefinitionError) as error:
        AgentDefinition.load(path)
    assert str(path) in str(error.value) and named in str(error.value)


def test_agent_cli_refuses_bad_input_before_touching_the_bus(tmp_path: Path) -> None:
    listed = ledgerbus("agent", "list", cwd=tmp_path)
    assert listed.returncode == 0 and set(listed.stdout.split()) == BUILTIN

    unknown = ledgerbus("agent", "run", "no-such-agent", cwd=tmp_path)
    assert unknown.returncode == 2
    assert "no agent named 'no-such-agent'" in unknown.stderr and "developer" in unknown.stderr

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: reviewer\n")
    invalid = ledgerbus("agent", "run", "reviewer", "--config", str(bad), cwd=tmp_path)
    assert invalid.returncode == 2 and str(bad) in invalid.stderr

    good = tmp_path / "good.yaml"
    good.write_text(
        "name: reviewer\ntitle: t\nrole: r\ngoal: g\nbackstory: b\nllm: {provider: p, model: m}\n"
    )
    mismatch = ledgerbus("agent", "run", "other", "--config", str(good), cwd=tmp_path)
    assert mismatch.returncode == 2 and "defines agent 'reviewer', not 'other'" in mismatch.stderr
    assert not (tmp_path / ".ledgerbus").exists(), "nothing was created: no keys, no data dir"
