-- The mesh: the CA's roots, the certificates it issued, join tokens.

-- CA roots (self-made). The private key is sealed (ChaCha20-Poly1305) with
-- the key in DATA_DIR/ca.key; only the `ca` module can open it. Several rows
-- during a root rotation; `active` is the one that signs.
CREATE TABLE ca_roots (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    cert_pem    TEXT    NOT NULL,
    sealed_key  BLOB    NOT NULL,
    fingerprint TEXT    NOT NULL,   -- sha256:HEX of the certificate's DER
    created_at  TEXT    NOT NULL,
    not_after   TEXT    NOT NULL,
    active      INTEGER NOT NULL
);

-- Every workload certificate issued: for the console and expiry metrics.
CREATE TABLE certificates (
    serial     TEXT PRIMARY KEY,     -- hex
    identity   TEXT NOT NULL,        -- spiffe://...
    issued_at  TEXT NOT NULL,
    not_after  TEXT NOT NULL
);
CREATE INDEX certificates_by_identity ON certificates (identity, not_after);

-- Join tokens: what an agent shows once to get its first certificate.
-- Only a SHA-256 of the secret is kept.
CREATE TABLE join_tokens (
    id              TEXT PRIMARY KEY,
    hash            TEXT NOT NULL UNIQUE,
    namespace       TEXT NOT NULL,
    service_account TEXT NOT NULL,
    service         TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    expires_at      TEXT NOT NULL,
    single_use      INTEGER NOT NULL,
    used_at         TEXT,            -- first use
    uses            INTEGER NOT NULL DEFAULT 0,
    revoked_at      TEXT
);
