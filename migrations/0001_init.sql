-- meshgate's configuration store. Only server/src/store runs SQL.

-- The current state: one row per object.
CREATE TABLE resources (
    kind             TEXT    NOT NULL,
    namespace        TEXT    NOT NULL,
    name             TEXT    NOT NULL,
    uid              TEXT    NOT NULL,
    labels           TEXT    NOT NULL DEFAULT '{}',  -- JSON object
    annotations      TEXT    NOT NULL DEFAULT '{}',  -- JSON object
    body             TEXT    NOT NULL,               -- JSON: the spec (a Secret's type and data)
    resource_version INTEGER NOT NULL,               -- revision of the last change
    generation       INTEGER NOT NULL,
    created_at       TEXT    NOT NULL,
    updated_at       TEXT    NOT NULL,
    PRIMARY KEY (kind, namespace, name)
);
CREATE INDEX resources_by_namespace ON resources (namespace, kind);

-- Every change ever made, oldest first. The revision number is global, so
-- "the configuration as of revision N" is well defined.
CREATE TABLE revisions (
    revision  INTEGER PRIMARY KEY AUTOINCREMENT,
    txn       INTEGER NOT NULL,      -- revisions written by one request share it
    at        TEXT    NOT NULL,
    actor     TEXT    NOT NULL,
    op        TEXT    NOT NULL CHECK (op IN ('create', 'update', 'delete')),
    kind      TEXT    NOT NULL,
    namespace TEXT    NOT NULL,
    name      TEXT    NOT NULL,
    before    TEXT,                  -- JSON document, NULL when created
    after     TEXT,                  -- JSON document, NULL when deleted
    reason    TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX revisions_by_object ON revisions (kind, namespace, name, revision);
CREATE INDEX revisions_by_txn ON revisions (txn);

CREATE TABLE users (
    name          TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,     -- argon2id PHC string
    created_at    TEXT NOT NULL
);

-- API tokens. Only a SHA-256 of each token is kept: tokens are 256-bit
-- random values, so a slow hash adds nothing but latency to every request.
CREATE TABLE tokens (
    id         TEXT PRIMARY KEY,
    hash       TEXT NOT NULL UNIQUE,
    subject    TEXT NOT NULL,
    purpose    TEXT NOT NULL,        -- 'admin' | 'session'
    created_at TEXT NOT NULL,
    expires_at TEXT                  -- NULL: does not expire
);
