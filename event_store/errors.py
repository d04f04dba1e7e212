"""Which database errors are worth waiting out, for every process that writes."""

from __future__ import annotations

import asyncpg

#: Errors after which the same transaction can succeed later: the connection or
#: the server went away, or PostgreSQL asked for the transaction to be retried.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.TransactionRollbackError,  # serialization failure, deadlock
    asyncpg.OperatorInterventionError,  # shutting down, starting up
    asyncpg.InsufficientResourcesError,  # too many connections, disk full
)
