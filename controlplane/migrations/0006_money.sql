-- Exact money (issue 16): model prices as versioned data, the cost of every
-- usage event fixed at ingest, per-plan markup, meter reports in money with
-- a carried remainder, and dollar-budget threshold events. Portable subset,
-- as in 0001. Every amount is a BIGINT of picodollars (10^-12 USD; $1 per
-- million tokens is exactly 1 picodollar per token), never a float.

-- A model's price per token of each class, from `effective_from` on. An
-- operator's change inserts a new row; rows are never updated or deleted,
-- so the version an event was priced with stays readable for ever. The
-- version in force at time t is the row of the model with the greatest
-- `effective_from <= t` (ties: the greatest id, the later one). NULL
-- optional classes are charged at the input (or output) price. `model` is
-- the canonical name usage events carry; no foreign key, so a deleted
-- model's history stays.
CREATE TABLE model_prices (
    id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    effective_from BIGINT NOT NULL,
    input BIGINT NOT NULL,
    output BIGINT NOT NULL,
    cache_read_input BIGINT,
    cache_write_5m_input BIGINT,
    cache_write_1h_input BIGINT,
    audio_input BIGINT,
    reasoning_output BIGINT,
    audio_output BIGINT,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL
);
CREATE INDEX model_prices_model ON model_prices (model, effective_from);

-- The old prices were f64 USD per million tokens. A value that is a whole
-- number of micro-dollars per million (at most six decimals, as every
-- published price is) becomes the model's first version, in force from the
-- beginning (it is what every report used until now). Anything else, or a
-- model whose prices were both 0 (the old default for "not given"), gets no
-- version: the model is unpriced (flagged in reports and a metric, never
-- billed at 0 silently) and an audit entry names what was not migrated.
INSERT INTO model_prices (id, model, effective_from, input, output, created_at, created_by)
SELECT 'prc_migrated_' || id, name, 0,
       CAST(ROUND(input_price_per_mtok * 1000000) AS BIGINT),
       CAST(ROUND(output_price_per_mtok * 1000000) AS BIGINT),
       updated_at, 'migration 0006'
FROM models
WHERE (input_price_per_mtok > 0 OR output_price_per_mtok > 0)
  AND input_price_per_mtok >= 0 AND output_price_per_mtok >= 0
  AND ABS(input_price_per_mtok * 1000000 - ROUND(input_price_per_mtok * 1000000)) < 0.000001
  AND ABS(output_price_per_mtok * 1000000 - ROUND(output_price_per_mtok * 1000000)) < 0.000001;

INSERT INTO audit_log (id, at, actor, action, target, diff)
SELECT 'aud_migrated_0006_' || id, updated_at, 'migration 0006', 'model.price_not_migrated', id,
       '{"input_price_per_mtok": "' || CAST(input_price_per_mtok AS TEXT) ||
       '", "output_price_per_mtok": "' || CAST(output_price_per_mtok AS TEXT) || '"}'
FROM models
WHERE id NOT IN (SELECT SUBSTR(id, 14) FROM model_prices WHERE id LIKE 'prc_migrated_%');

ALTER TABLE models DROP COLUMN input_price_per_mtok;
ALTER TABLE models DROP COLUMN output_price_per_mtok;

-- A plan's markup over the models' prices, in basis points (100 = 1%),
-- applied at ingest to what its users are billed.
ALTER TABLE plans ADD COLUMN markup_bp BIGINT NOT NULL DEFAULT 0;

-- The token classes of an event (each a part of input_tokens or
-- output_tokens), and its cost fixed at ingest: per class and in total at
-- the price version in force at `timestamp_ms`, and `billed_pico` after the
-- user's plan markup. All NULL (cost) when the model had no price: the
-- event is flagged unpriced rather than costed at 0.
ALTER TABLE usage_events ADD COLUMN cache_read_input BIGINT NOT NULL DEFAULT 0;
ALTER TABLE usage_events ADD COLUMN cache_write_5m_input BIGINT NOT NULL DEFAULT 0;
ALTER TABLE usage_events ADD COLUMN cache_write_1h_input BIGINT NOT NULL DEFAULT 0;
ALTER TABLE usage_events ADD COLUMN audio_input BIGINT NOT NULL DEFAULT 0;
ALTER TABLE usage_events ADD COLUMN reasoning_output BIGINT NOT NULL DEFAULT 0;
ALTER TABLE usage_events ADD COLUMN audio_output BIGINT NOT NULL DEFAULT 0;
ALTER TABLE usage_events ADD COLUMN price_version TEXT;
ALTER TABLE usage_events ADD COLUMN markup_bp BIGINT NOT NULL DEFAULT 0;
ALTER TABLE usage_events ADD COLUMN cost_pico BIGINT;
ALTER TABLE usage_events ADD COLUMN billed_pico BIGINT;
ALTER TABLE usage_events ADD COLUMN cost_input BIGINT;
ALTER TABLE usage_events ADD COLUMN cost_cache_read_input BIGINT;
ALTER TABLE usage_events ADD COLUMN cost_cache_write_5m_input BIGINT;
ALTER TABLE usage_events ADD COLUMN cost_cache_write_1h_input BIGINT;
ALTER TABLE usage_events ADD COLUMN cost_audio_input BIGINT;
ALTER TABLE usage_events ADD COLUMN cost_output BIGINT;
ALTER TABLE usage_events ADD COLUMN cost_reasoning_output BIGINT;
ALTER TABLE usage_events ADD COLUMN cost_audio_output BIGINT;

-- Events stored before this migration had no classes: their cost is plain
-- input and output at the migrated version (what reports showed for them).
UPDATE usage_events SET
    price_version = (SELECT p.id FROM model_prices p WHERE p.model = usage_events.model),
    cost_input = input_tokens * (SELECT p.input FROM model_prices p WHERE p.model = usage_events.model),
    cost_output = output_tokens * (SELECT p.output FROM model_prices p WHERE p.model = usage_events.model),
    cost_cache_read_input = 0, cost_cache_write_5m_input = 0, cost_cache_write_1h_input = 0,
    cost_audio_input = 0, cost_reasoning_output = 0, cost_audio_output = 0
WHERE model IN (SELECT model FROM model_prices);
UPDATE usage_events SET cost_pico = cost_input + cost_output, billed_pico = cost_input + cost_output
WHERE price_version IS NOT NULL;
CREATE INDEX usage_events_unpriced ON usage_events (day) WHERE cost_pico IS NULL;

-- Meter reports in money: `amount_pico` is the billed sum of the rows a
-- report claimed; `value` (the meter units sent) is
-- floor((carried_in_pico + amount_pico) / unit) and `remainder_pico` what
-- is left, carried into the next report of the same (user, customer,
-- meter), whose `carried_from` names this one. The unique index lets a
-- remainder be carried once only. For a tokens meter, amount and
-- remainder are informational (value is the token sum).
ALTER TABLE meter_reports ADD COLUMN amount_pico BIGINT NOT NULL DEFAULT 0;
ALTER TABLE meter_reports ADD COLUMN carried_in_pico BIGINT NOT NULL DEFAULT 0;
ALTER TABLE meter_reports ADD COLUMN remainder_pico BIGINT NOT NULL DEFAULT 0;
ALTER TABLE meter_reports ADD COLUMN carried_from TEXT;
CREATE UNIQUE INDEX meter_reports_carried_from ON meter_reports (carried_from);
CREATE INDEX meter_reports_chain ON meter_reports (user_id, stripe_customer_id, event_name, created_at);

-- Dollar-budget thresholds crossed: once per user, UTC month and
-- threshold (percent of the monthly budget in force when it was crossed).
CREATE TABLE budget_events (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    month TEXT NOT NULL,
    threshold_pct BIGINT NOT NULL,
    budget_pico BIGINT NOT NULL,
    spent_pico BIGINT NOT NULL,
    at BIGINT NOT NULL
);
CREATE UNIQUE INDEX budget_events_once ON budget_events (user_id, month, threshold_pct);
