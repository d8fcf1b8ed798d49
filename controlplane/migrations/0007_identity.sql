-- Identity (issue 18): users known to the identity provider (Clerk), kept
-- in step by its webhooks. Portable subset, as in 0001.

-- The Clerk user id of a Molt user (NULL: not linked), and the Clerk time
-- (`updated_at`, Unix ms) of the last identity change applied to the user,
-- so a delivery older than what the user already reflects changes nothing.
ALTER TABLE users ADD COLUMN clerk_id TEXT;
ALTER TABLE users ADD COLUMN clerk_updated_at BIGINT;
-- Both SQLite and PostgreSQL let any number of rows hold NULL here.
CREATE UNIQUE INDEX users_clerk_id ON users (clerk_id);

-- Each webhook delivery (Svix message id) once: a redelivery finds its row
-- and does nothing. `clerk_id` and `type` also answer "was this Clerk user
-- deleted?", so a `user.created` or `user.updated` that arrives after the
-- `user.deleted` of the same user does nothing, even when the user was
-- never created here.
CREATE TABLE clerk_events (
    svix_id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    clerk_id TEXT,
    user_id TEXT,
    event_at BIGINT NOT NULL,
    received_at BIGINT NOT NULL
);
CREATE INDEX clerk_events_clerk_id ON clerk_events (clerk_id, type);
