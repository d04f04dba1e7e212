-- Sealed agent messages each recipient has accepted, so a replayed copy is refused
-- (consumers/replay_guard.py). The Kafka position it was first seen at tells a
-- replay (same id, another position) from a redelivery after a crash (same position).
CREATE TABLE agent_messages_seen (
    tenant_id  text        NOT NULL,
    recipient  text        NOT NULL,
    message_id text        NOT NULL,
    topic      text        NOT NULL,
    partition  integer     NOT NULL,
    "offset"   bigint      NOT NULL,
    seen_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, recipient, message_id)
);
CREATE INDEX agent_messages_seen_by_time ON agent_messages_seen (seen_at);
