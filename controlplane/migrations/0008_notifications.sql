-- Notifications (issue 18): what happened to a user (bot running, bot
-- failed, payment failed, usage anomaly, ...), as an in-app entry, and the
-- outbox of its deliveries by email and to the operator's webhook
-- endpoints. Portable subset, as in 0001.
--
-- A notification and its delivery rows are written in the same
-- transaction as the state change that causes it (`store::notifications::
-- enqueue`), so a change is never stored without them, nor they without it.
-- `dedupe_key` (user, kind, subject) is unique: the same event applied
-- twice notifies once.

CREATE TABLE notifications (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users (id),
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    dedupe_key TEXT NOT NULL UNIQUE,
    title TEXT NOT NULL,
    message TEXT NOT NULL,
    data TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    read_at BIGINT
);
CREATE INDEX notifications_user ON notifications (user_id, id);

-- The operator's app: every notification is POSTed to each endpoint live
-- when it is made, signed per Standard Webhooks with the endpoint's secret
-- (sealed with the at-rest key, bound to the endpoint id).
CREATE TABLE webhook_endpoints (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    description TEXT NOT NULL,
    secret_sealed TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    disabled_at BIGINT
);

-- The outbox: one row per (notification, channel, target). `id` is
-- `<notification id>.email` or `<notification id>.<endpoint id>`.
-- status: pending (to send; `next_attempt_at` says when), delivered,
-- failed (gave up after max attempts), skipped (the channel is not
-- configured). A worker sends only a row it has claimed
-- (`lease_owner`/`lease_until`, a conditional UPDATE) and records the
-- result only while the claim is still its own.
CREATE TABLE notification_deliveries (
    id TEXT PRIMARY KEY,
    notification_id TEXT NOT NULL REFERENCES notifications (id),
    channel TEXT NOT NULL,
    endpoint_id TEXT REFERENCES webhook_endpoints (id),
    status TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    lease_owner TEXT,
    lease_until BIGINT,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    delivered_at BIGINT
);
CREATE INDEX notification_deliveries_due ON notification_deliveries (status, next_attempt_at);
CREATE INDEX notification_deliveries_notification ON notification_deliveries (notification_id);
