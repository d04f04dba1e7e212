"""LLM prices per model, and the exact cost of a call in integer micro-USD.

Prices are USD per 1 million tokens, so one token at price ``p`` costs ``p``
micro-USD: a call costs ``input_tokens * input + output_tokens * output``
micro-USD, computed in ``Decimal`` (no float ever touches a price) and rounded
once, half up, to a whole micro-USD. Rounding the sum rather than each part
keeps two half-micro parts from becoming two micros.

The table is a YAML or JSON file (``consumers/pricing.yaml`` is the default)::

    models:
      gpt-4o-mini: {input: 0.15, output: 0.60}

YAML and JSON numbers are read as decimals straight from their text, so
``0.1`` is exactly one tenth.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

#: Characters after which a table entry may price a longer model name.
NAME_BOUNDARIES = frozenset("-:/@")
FIELDS = ("input", "output")


class PricingError(ValueError):
    """A pricing file cannot be used; the message names the file and the entry."""


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """USD per 1 million tokens, exact."""

    input: Decimal
    output: Decimal

    def cost_micros(self, input_tokens: int, output_tokens: int) -> int:
        """The cost in micro-USD, rounded half up (see the module doc)."""
        if input_tokens < 0 or output_tokens < 0:
            raise ValueError(
                f"token counts must not be negative (input {input_tokens}, output {output_tokens})"
            )
        micros = input_tokens * self.input + output_tokens * self.output
        return int(micros.quantize(Decimal(1), rounding=ROUND_HALF_UP))


class PricingTable:
    """Prices by model name: exact name first, then the longest prefix at a name boundary."""

    def __init__(self, prices: Mapping[str, ModelPrice]) -> None:
        self.prices = dict(prices)

    @classmethod
    def from_file(cls, path: Path | str) -> PricingTable:
        """The table in ``path``: JSON when it ends in ``.json``, YAML otherwise."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise PricingError(f"{path}: cannot read the pricing file: {exc}") from exc
        return parse(text, str(path), as_json=path.suffix.lower() == ".json")

    @classmethod
    def default(cls) -> PricingTable:
        """The packaged table, ``consumers/pricing.yaml``."""
        return _packaged()

    def price(self, model: str) -> ModelPrice | None:
        """What ``model`` costs, or None when no entry prices it."""
        exact = self.prices.get(model)
        if exact is not None:
            return exact
        for cut in range(len(model) - 1, 0, -1):  # longest prefix first
            if model[cut] in NAME_BOUNDARIES and model[:cut] in self.prices:
                return self.prices[model[:cut]]
        return None

    def cost_micros(self, model: str, input_tokens: int, output_tokens: int) -> int | None:
        """The call's cost in micro-USD, or None when the model is not priced."""
        price = self.price(model)
        return None if price is None else price.cost_micros(input_tokens, output_tokens)


@cache
def _packaged() -> PricingTable:
    source = resources.files("consumers") / "pricing.yaml"
    return parse(source.read_text(encoding="utf-8"), str(source), as_json=False)


def parse(text: str, name: str, *, as_json: bool) -> PricingTable:
    """The table in ``text`` (from file ``name``, which every error names)."""
    try:
        document = json.loads(text, parse_float=Decimal) if as_json else yaml.load(text, _Loader)
    except (ValueError, yaml.YAMLError) as exc:
        raise PricingError(f"{name}: not valid {'JSON' if as_json else 'YAML'}: {exc}") from exc
    if not isinstance(document, dict) or set(document) != {"models"}:
        raise PricingError(f"{name}: expected one top-level key, models")
    models = document["models"]
    if not isinstance(models, dict) or not models:
        raise PricingError(f"{name}: models must map model names to prices")
    return PricingTable(
        {str(model): _entry(name, str(model), fields) for model, fields in models.items()}
    )


def _entry(name: str, model: str, fields: Any) -> ModelPrice:
    where = f"{name}: models.{model}"
    if not isinstance(fields, dict):
        raise PricingError(f"{where}: expected input and output prices, got {fields!r}")
    missing = [field for field in FIELDS if field not in fields]
    if missing:
        raise PricingError(f"{where}: missing {' and '.join(missing)}")
    unknown = sorted(str(field) for field in fields if field not in FIELDS)
    if unknown:
        raise PricingError(f"{where}: unknown field {', '.join(unknown)} (expected input, output)")
    return ModelPrice(*(_usd(f"{where}.{field}", fields[field]) for field in FIELDS))


def _usd(where: str, value: Any) -> Decimal:
    """A price: a finite, non-negative number (quoted decimals are accepted too)."""
    if isinstance(value, bool) or not isinstance(value, int | Decimal | str):
        raise PricingError(f"{where}: {value!r} is not a number")
    try:
        price = Decimal(value)
    except InvalidOperation:
        raise PricingError(f"{where}: {value!r} is not a number") from None
    if not price.is_finite():
        raise PricingError(f"{where}: {value!r} is not a finite number")
    if price < 0:
        raise PricingError(f"{where}: {value!r} is negative")
    return price


class _Loader(yaml.SafeLoader):
    """Safe YAML whose floats are ``Decimal``s of their text: ``0.1`` stays one tenth."""


def _decimal(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Decimal | str:
    text = loader.construct_scalar(node)
    try:
        return Decimal(text.replace("_", ""))
    except InvalidOperation:  # .inf, .nan: left as text for _usd to reject
        return text


_Loader.add_constructor("tag:yaml.org,2002:float", _decimal)
