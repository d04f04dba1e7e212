-- How far each projection has applied each tenant's history. Written in the
-- same transaction as the projection's own tables (event_store.projections).
CREATE TABLE projection_checkpoints (
    projection text   NOT NULL,
    tenant_id  text   NOT NULL,
    position   bigint NOT NULL CHECK (position >= 0),
    PRIMARY KEY (projection, tenant_id)
);
