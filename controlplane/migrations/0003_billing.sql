-- Billing (issue 7): Stripe webhook deliveries seen, the meter reports sent
-- to Stripe, and which usage rows each report covers. Portable subset, as in
-- 0001.
--
-- Exactly-once metering rests on `meter_reports`: a report (its identifier
-- and value fixed) and the claim of its usage rows (`usage_events.meter_report`)
-- are written in one transaction BEFORE Stripe is called, so a retry after
-- any crash re-sends the same identifier and value, which Stripe dedupes.

-- Each Stripe event id once: a redelivery finds its row and does nothing.
CREATE TABLE stripe_events (
    id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    user_id TEXT,
    created BIGINT NOT NULL,
    received_at BIGINT NOT NULL
);

-- Users whose invoice payment failed, since when (the grace policy
-- suspends them once `since` is older than the configured grace).
CREATE TABLE billing_past_due (
    user_id TEXT PRIMARY KEY REFERENCES users (id),
    since BIGINT NOT NULL
);

-- One row per meter event Molt sends (or decided not to send).
-- status: pending (to send), sent (Stripe has it), unbillable (window
-- older than Stripe accepts), failed (Stripe refused it for good).
CREATE TABLE meter_reports (
    identifier TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    stripe_customer_id TEXT NOT NULL,
    event_name TEXT NOT NULL,
    window_start BIGINT NOT NULL,
    window_end BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    value BIGINT NOT NULL,
    status TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    sent_at BIGINT
);
CREATE UNIQUE INDEX meter_reports_window ON meter_reports (user_id, event_name, window_start, seq);
CREATE INDEX meter_reports_status ON meter_reports (status);

-- The report that covers a usage row (NULL: not reported yet).
ALTER TABLE usage_events ADD COLUMN meter_report TEXT;
CREATE INDEX usage_events_unreported ON usage_events (user_id, timestamp_ms) WHERE meter_report IS NULL;
CREATE INDEX usage_events_meter_report ON usage_events (meter_report);
