-- Molt control plane schema, written once for both SQLite and PostgreSQL.
-- Portable subset only: TEXT, BIGINT, DOUBLE PRECISION; times are Unix
-- milliseconds; lists and objects are JSON stored as TEXT; ids are
-- time-ordered UUIDv7 strings with a type prefix, so `ORDER BY id` is
-- creation order and doubles as the pagination cursor.

CREATE TABLE config_state (
    id BIGINT PRIMARY KEY,
    version BIGINT NOT NULL
);
INSERT INTO config_state (id, version) VALUES (1, 0);

CREATE TABLE users (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    plan TEXT,
    stripe_customer_id TEXT,
    limits TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users (id),
    name TEXT NOT NULL,
    prefix TEXT NOT NULL,
    sha256 TEXT NOT NULL UNIQUE,
    models TEXT,
    expires_at BIGINT,
    revoked_at BIGINT,
    created_at BIGINT NOT NULL
);
CREATE INDEX api_keys_user_id ON api_keys (user_id);

CREATE TABLE providers (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    base_url TEXT NOT NULL,
    keys_sealed TEXT NOT NULL,
    key_count BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE models (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    provider TEXT NOT NULL REFERENCES providers (name),
    upstream_name TEXT,
    aliases TEXT NOT NULL,
    fallbacks TEXT NOT NULL,
    input_price_per_mtok DOUBLE PRECISION NOT NULL,
    output_price_per_mtok DOUBLE PRECISION NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE usage_events (
    event_id TEXT PRIMARY KEY,
    request_id TEXT NOT NULL,
    timestamp_ms BIGINT NOT NULL,
    day TEXT NOT NULL,
    key_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    model TEXT NOT NULL,
    provider TEXT NOT NULL,
    route TEXT NOT NULL,
    status BIGINT NOT NULL,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    estimated BIGINT NOT NULL,
    stream BIGINT NOT NULL,
    attempts BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL,
    upstream_ttfb_ms BIGINT,
    outcome TEXT NOT NULL,
    received_at BIGINT NOT NULL
);
CREATE INDEX usage_events_user_day ON usage_events (user_id, day);
CREATE INDEX usage_events_day ON usage_events (day);

CREATE TABLE audit_log (
    id TEXT PRIMARY KEY,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    diff TEXT NOT NULL
);
CREATE INDEX audit_log_at ON audit_log (at);

CREATE TABLE admin_tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    sha256 TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
