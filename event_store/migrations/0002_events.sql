-- The archive: every event that entered Kafka, once, in its tenant's hash chain.
CREATE TABLE events (
    tenant_id       text        NOT NULL,
    position        bigint      NOT NULL CHECK (position >= 1),
    event_id        uuid        NOT NULL UNIQUE,
    type            text        NOT NULL,
    subject         text        NOT NULL,
    time            timestamptz NOT NULL,
    correlation_id  text,
    causation_id    text,
    schema_id       integer     NOT NULL,
    body            bytea       NOT NULL,  -- canonical bytes, see event_store.chain
    kafka_topic     text,
    kafka_partition integer,
    kafka_offset    bigint,
    prev_hash       bytea       NOT NULL,
    hash            bytea       NOT NULL,
    archived_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, position)
);

CREATE INDEX events_by_subject ON events (tenant_id, subject, position);
CREATE INDEX events_by_type ON events (tenant_id, type, position);
CREATE INDEX events_by_time ON events (tenant_id, time, position);
CREATE INDEX events_by_correlation ON events (tenant_id, correlation_id, position)
    WHERE correlation_id IS NOT NULL;

-- One row per tenant: the chain's head. Appenders lock it (SELECT ... FOR
-- UPDATE) so a tenant's chain has exactly one writer at a time.
CREATE TABLE chain_heads (
    tenant_id text   PRIMARY KEY,
    position  bigint NOT NULL,
    hash      bytea  NOT NULL
);
