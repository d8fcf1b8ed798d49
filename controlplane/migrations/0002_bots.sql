-- Bots: one provisioned bot gateway per user, and the durable state of its
-- provisioning (issue 6). Portable subset, as in 0001.
--
-- `status` is where the state machine is (requested, volume_created,
-- machine_created, waiting_health, running, stopping, stopped, starting,
-- deleting, deleted, failed); `desired` is what the operator asked for
-- (running, stopped, deleted). A worker only acts on a row it has claimed:
-- `lease_owner`/`lease_until` are set by a conditional UPDATE, and every
-- result is written back only while the claim is still its own.

CREATE TABLE bots (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users (id),
    name TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    desired TEXT NOT NULL,
    region TEXT,
    model TEXT NOT NULL,
    volume_id TEXT,
    machine_id TEXT,
    gateway_url TEXT,
    token_sealed TEXT NOT NULL,
    error TEXT,
    attempts BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    step_started_at BIGINT NOT NULL,
    lease_owner TEXT,
    lease_until BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX bots_due ON bots (status, next_attempt_at);
CREATE INDEX bots_user_id ON bots (user_id);
-- One live bot per user; deleted bots stay for the record.
CREATE UNIQUE INDEX bots_one_per_user ON bots (user_id) WHERE status <> 'deleted';
