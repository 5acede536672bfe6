-- API keys of Consumers: what a caller shows in `x-api-key`. Only a
-- SHA-256 of the key is kept (the key is shown once, when made).
CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    hash        TEXT NOT NULL UNIQUE,
    namespace   TEXT NOT NULL,
    consumer    TEXT NOT NULL,
    prefix      TEXT NOT NULL,   -- the key's first characters, to tell keys apart in lists
    created_at  TEXT NOT NULL,
    revoked_at  TEXT
);
CREATE INDEX api_keys_by_consumer ON api_keys (namespace, consumer);
