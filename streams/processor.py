"""The shape of a stream processor: faust agents plus the projections they decide on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import faust

from event_store.projections import Projection
from streams.app import StreamsConfig
from streams.context import StreamsContext


class Processor(Protocol):
    """Installs its agents and timers on the app; owns some projections.

    The projections are folded both by the processor itself (inside its
    decisions, so the next decision sees the last one) and by the projection
    runner from the archive (so ``projections rebuild`` reproduces them). Their
    ``apply`` must therefore be idempotent: applying an event twice, or events
    of different topics in a different order, gives the same rows.
    """

    name: str

    @property
    def projections(self) -> Sequence[Projection]: ...

    def install(self, app: faust.App, config: StreamsConfig, context: StreamsContext) -> None: ...
