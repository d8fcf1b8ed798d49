-- Plans (issue 5): named limit sets users are on. A plan's `limits` is
-- `molt_config::limits::RawLimitSet` as JSON TEXT (the six limit fields,
-- each optional), validated by the service before it is stored, like
-- `users.limits`: one serde type serves the API, the store and the
-- snapshot, so adding a limit field to the contract needs no migration
-- and the six fields are not spelled out again in SQL and row mapping.
-- Portable subset, as in 0001.

CREATE TABLE plans (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL,
    limits TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- `users.plan` was free text nothing read. Every distinct value in use
-- becomes a plan of that name with no limits of its own, so no user loses
-- their label and nobody's effective limits change (a plan without limits
-- means the deployment defaults, which is what every user had before).
-- Names are kept verbatim even where they are not slugs (the API only
-- creates slugs); the ids are derived from the unique name, so they are
-- unique and sort after the time-ordered ids of plans made later.
INSERT INTO plans (id, name, description, limits, created_at, updated_at)
SELECT DISTINCT 'pln_migrated_' || plan, plan, 'created by migration 0005 from users.plan', '{}', 0, 0
FROM users WHERE plan IS NOT NULL AND plan <> '';

-- Neither SQLite nor PostgreSQL can add a foreign key to an existing column
-- in a portable way, but both can add a column that has one, drop a column
-- and rename one: so the reference is built beside the old column, filled,
-- and takes its name. Empty strings become NULL (no plan).
ALTER TABLE users ADD COLUMN plan_ref TEXT REFERENCES plans (name);
UPDATE users SET plan_ref = plan WHERE plan IS NOT NULL AND plan <> '';
ALTER TABLE users DROP COLUMN plan;
ALTER TABLE users RENAME COLUMN plan_ref TO plan;
-- "Is this plan in use?" and the foreign key's own checks on plan delete.
CREATE INDEX users_plan ON users (plan);
