-- Gateway API keys. Only a SHA-256 of the secret part is stored: the full key
-- (lb_<key_id>_<secret>) is shown once, at creation.
CREATE TABLE api_keys (
    key_id        text        PRIMARY KEY,
    tenant_id     text        NOT NULL,
    role          text        NOT NULL,
    scopes        text[],
    tier          text        NOT NULL,
    name          text        NOT NULL DEFAULT '',
    secret_sha256 bytea       NOT NULL,
    created_at    timestamptz NOT NULL,
    expires_at    timestamptz,
    revoked_at    timestamptz
);
CREATE INDEX api_keys_by_tenant ON api_keys (tenant_id, created_at);
