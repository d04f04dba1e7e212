"""Reading the migrations directory: strict names, one file per version, numeric order."""

from __future__ import annotations

from pathlib import Path

import pytest

from event_store.migrate import MigrationError, load


def test_loads_sql_files_in_version_order(tmp_path: Path) -> None:
    (tmp_path / "0010_later.sql").write_text("SELECT 10;")
    (tmp_path / "0002_early.sql").write_text("SELECT 2;")
    (tmp_path / "__init__.py").write_text("")

    assert [(m.version, m.name, m.sql) for m in load(tmp_path)] == [
        (2, "0002_early", "SELECT 2;"),
        (10, "0010_later", "SELECT 10;"),
    ]


@pytest.mark.parametrize(
    ("files", "complaint"),
    [
        (["001_short.sql"], "named NNNN_name.sql"),
        (["0001_Capital.sql"], "named NNNN_name.sql"),
        (["0001_a.sql", "0001_b.sql"], "version 1 is used twice"),
    ],
)
def test_rejects_badly_named_or_duplicate_files(
    tmp_path: Path, files: list[str], complaint: str
) -> None:
    for name in files:
        (tmp_path / name).write_text("SELECT 1;")

    with pytest.raises(MigrationError, match=complaint):
        load(tmp_path)


def test_ships_the_schema_registry_migration() -> None:
    assert [m.name for m in load()][:1] == ["0001_schema_registry"]
