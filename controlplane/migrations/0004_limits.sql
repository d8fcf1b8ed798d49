-- Plans and limits (issue 5): the deployment-wide `[limits]` document the
-- data planes enforce, as `molt_config::limits::RawLimits` JSON without
-- `redis` (each data plane's Redis stays in its own file). One row, always
-- present; users' own overrides stay on `users.limits`. Portable subset, as
-- in 0001.

CREATE TABLE limits_document (
    id BIGINT PRIMARY KEY,
    body TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
INSERT INTO limits_document (id, body, updated_at) VALUES (1, '{}', 0);
