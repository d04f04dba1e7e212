"""Avro `timestamp-micros` <-> aware UTC datetime, in exact integer arithmetic.

Float seconds (`datetime.timestamp()`) lose microseconds on large values, and the
audit chain hashes these integers, so conversions must be exact both ways.
"""

from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MICRO = timedelta(microseconds=1)


def to_micros(moment: datetime) -> int:
    """Microseconds since the Unix epoch of an aware datetime."""
    return (moment - EPOCH) // _ONE_MICRO


def from_micros(micros: int) -> datetime:
    """Aware UTC datetime for microseconds since the Unix epoch."""
    return EPOCH + timedelta(0, 0, micros)  # positional: a third faster than microseconds=
