"""The pricing table: lookups, exact integer micro-USD costs, and files it refuses."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from consumers.pricing import ModelPrice, PricingError, PricingTable


def table(**prices: tuple[str, str]) -> PricingTable:
    return PricingTable(
        {model: ModelPrice(Decimal(i), Decimal(o)) for model, (i, o) in prices.items()}
    )


def test_packaged_table_has_the_seed_prices_and_the_stub() -> None:
    default = PricingTable.default()
    expected = {
        "claude-sonnet-4": ("3.00", "15.00"),
        "claude-opus": ("15.00", "75.00"),
        "gpt-4": ("30.00", "60.00"),
        "gpt-3.5-turbo": ("0.50", "1.50"),
        "ollama": ("0", "0"),
        "gpt-4o-mini": ("0.15", "0.60"),
        "stub-model": ("1.25", "2.50"),
    }
    for model, (i, o) in expected.items():
        assert default.price(model) == ModelPrice(Decimal(i), Decimal(o)), model


def test_exact_name_then_longest_prefix_at_a_name_boundary() -> None:
    prices = table(**{"gpt-4": ("30", "60"), "gpt-4-turbo": ("10", "30"), "llama3": ("0", "0")})
    assert prices.price("gpt-4") == ModelPrice(Decimal(30), Decimal(60))
    assert prices.price("gpt-4-0613") == ModelPrice(Decimal(30), Decimal(60))
    assert prices.price("gpt-4-turbo-2024-04-09") == ModelPrice(Decimal(10), Decimal(30))
    assert prices.price("llama3:8b") == ModelPrice(Decimal(0), Decimal(0))
    # A prefix that does not end at a boundary is another model, not a version.
    assert prices.price("gpt-4o") is None
    assert prices.price("gpt-4o-mini") is None
    assert prices.price("gpt") is None
    assert prices.price("") is None
    assert prices.cost_micros("mystery", 10, 10) is None


def test_dated_claude_name_is_priced_as_its_family() -> None:
    assert PricingTable.default().cost_micros("claude-sonnet-4-20250514", 1_000, 2_000) == 33_000


@pytest.mark.parametrize(
    ("price_in", "price_out", "tokens_in", "tokens_out", "micros"),
    [
        ("3", "15", 1_000_000, 1_000_000, 18_000_000),  # a million tokens cost the price in USD
        ("0.15", "0.60", 1_200, 300, 360),  # 180 + 180
        ("0.1", "0", 3, 0, 0),  # 0.3: floats would make 0.30000000000000004
        ("0.15", "0", 7, 0, 1),  # 1.05 rounds down
        ("0.5", "0", 1, 0, 1),  # half rounds up
        ("0.5", "0.5", 1, 1, 1),  # the sum is rounded once, not each half
        ("2.5", "0", 3, 0, 8),  # 7.5 rounds up
        ("0.15", "0.60", 10**12, 10**12, 750_000_000_000),  # big counts stay exact
        ("0", "0", 5_000, 5_000, 0),
    ],
)
def test_cost_is_exact_integer_micro_usd(
    price_in: str, price_out: str, tokens_in: int, tokens_out: int, micros: int
) -> None:
    cost = table(m=(price_in, price_out)).cost_micros("m", tokens_in, tokens_out)
    assert cost == micros
    assert type(cost) is int


def test_negative_token_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        table(m=("1", "1")).cost_micros("m", -1, 0)


def test_yaml_file_reads_prices_exactly(tmp_path: Path) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text(
        "models:\n  tiny: {input: 0.1, output: '0.3'}\n  free: {input: 0, output: 0}\n"
        "  big: {input: 1_000.5, output: 2}\n"
    )
    prices = PricingTable.from_file(path)
    assert prices.price("tiny") == ModelPrice(Decimal("0.1"), Decimal("0.3"))
    assert prices.price("free") == ModelPrice(Decimal(0), Decimal(0))
    assert prices.price("big") == ModelPrice(Decimal("1000.5"), Decimal(2))
    assert prices.cost_micros("tiny", 10, 10) == 4


def test_json_file_reads_prices_exactly(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text('{"models": {"tiny": {"input": 0.1, "output": 0.2}}}')
    assert PricingTable.from_file(str(path)).price("tiny") == ModelPrice(
        Decimal("0.1"), Decimal("0.2")
    )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("models:\n  gpt-x: {input: -1.5, output: 2}\n", r"models\.gpt-x\.input: .*negative"),
        (
            "models:\n  gpt-x: {input: 1, output: cheap}\n",
            r"models\.gpt-x\.output: 'cheap' is not a number",
        ),
        (
            "models:\n  gpt-x: {input: true, output: 1}\n",
            r"models\.gpt-x\.input: True is not a number",
        ),
        (
            "models:\n  gpt-x: {input: [1], output: 1}\n",
            r"models\.gpt-x\.input: \[1\] is not a number",
        ),
        (
            "models:\n  gpt-x: {input: .inf, output: 1}\n",
            r"models\.gpt-x\.input: '\.inf' is not a number",
        ),
        (
            "models:\n  gpt-x: {input: Infinity, output: 1}\n",
            r"models\.gpt-x\.input: .*not a finite",
        ),
        ("models:\n  gpt-x: {input: 1}\n", r"models\.gpt-x: missing output"),
        ("models:\n  gpt-x: {}\n", r"models\.gpt-x: missing input and output"),
        (
            "models:\n  gpt-x: {input: 1, output: 1, cache: 1}\n",
            r"models\.gpt-x: unknown field cache",
        ),
        ("models:\n  gpt-x: 3\n", r"models\.gpt-x: expected input and output"),
        ("models: {}\n", "models must map"),
        ("models: [a]\n", "models must map"),
        ("prices:\n  gpt-x: {input: 1, output: 1}\n", "one top-level key, models"),
        ("- just a list\n", "one top-level key, models"),
        ("models: {gpt-x: [\n", "not valid YAML"),
    ],
)
def test_bad_file_is_refused_naming_file_and_entry(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text(text)
    with pytest.raises(PricingError, match=problem) as caught:
        PricingTable.from_file(path)
    assert str(caught.value).startswith(f"{path}: ")


def test_bad_json_and_missing_files_are_refused(tmp_path: Path) -> None:
    broken = tmp_path / "prices.json"
    broken.write_text('{"models": {"m": {"input": 1, "output": 2}}')
    with pytest.raises(PricingError, match=f"{broken}: not valid JSON"):
        PricingTable.from_file(broken)
    missing = tmp_path / "absent.yaml"
    with pytest.raises(PricingError, match=f"{missing}: cannot read"):
        PricingTable.from_file(missing)
