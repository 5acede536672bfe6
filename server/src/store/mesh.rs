//! The mesh's records: CA roots (with their sealed keys, opaque here),
//! issued certificates and join tokens.

use sqlx::Row;

use super::{Result, Store, hash_token, now};

/// A CA root as stored. `sealed_key` is opened by the `ca` module only.
#[derive(Debug, Clone)]
pub struct StoredRoot {
    pub id: i64,
    pub cert_pem: String,
    pub sealed_key: Vec<u8>,
    pub active: bool,
    pub fingerprint: String,
    pub created_at: String,
    pub not_after: String,
    /// This root's certificate signed by the root before it (a rotation).
    pub cross_signed_pem: Option<String>,
}

/// A certificate the CA issued.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IssuedRecord {
    pub serial: String,
    pub identity: String,
    #[serde(rename = "issuedAt")]
    pub issued_at: String,
    #[serde(rename = "notAfter")]
    pub not_after: String,
    /// Fingerprint of the root that signed it (unknown for rows older than
    /// migration 0005).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
}

/// The root the CA signs with now, for counting certificates of the others.
pub struct SigningRoot {
    pub fingerprint: String,
    /// When it was made (stored form): rows without a root count by this.
    pub since: String,
}

/// What a join token lets its holder become.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct JoinScope {
    pub namespace: String,
    #[serde(rename = "serviceAccount")]
    pub service_account: String,
    pub service: String,
}

impl JoinScope {
    fn from_row(r: &sqlx::sqlite::SqliteRow) -> std::result::Result<JoinScope, sqlx::Error> {
        Ok(JoinScope {
            namespace: r.try_get("namespace")?,
            service_account: r.try_get("service_account")?,
            service: r.try_get("service")?,
        })
    }
}

/// A join token as listed (never its secret).
#[derive(Debug, Clone, serde::Serialize)]
pub struct JoinTokenInfo {
    pub id: String,
    #[serde(flatten)]
    pub scope: JoinScope,
    #[serde(rename = "createdAt")]
    pub created_at: String,
    #[serde(rename = "expiresAt")]
    pub expires_at: String,
    #[serde(rename = "singleUse")]
    pub single_use: bool,
    pub uses: i64,
    #[serde(rename = "revokedAt")]
    pub revoked_at: Option<String>,
}

/// Why a join token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JoinRefusal {
    #[error("unknown join token")]
    Unknown,
    #[error("the join token has expired")]
    Expired,
    #[error("the join token was revoked")]
    Revoked,
    #[error("the join token was for a single use and has been used")]
    Used,
}

impl Store {
    pub async fn ca_roots(&self) -> Result<Vec<StoredRoot>> {
        let rows = sqlx::query(
            "SELECT id, cert_pem, sealed_key, active, fingerprint, created_at, not_after, cross_signed_pem \
             FROM ca_roots ORDER BY id",
        )
        .fetch_all(self.pool())
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(StoredRoot {
                    id: r.try_get("id")?,
                    cert_pem: r.try_get("cert_pem")?,
                    sealed_key: r.try_get("sealed_key")?,
                    active: r.try_get::<i64, _>("active")? != 0,
                    fingerprint: r.try_get("fingerprint")?,
                    created_at: r.try_get("created_at")?,
                    not_after: r.try_get("not_after")?,
                    cross_signed_pem: r.try_get("cross_signed_pem")?,
                })
            })
            .collect()
    }

    /// Stores a new root and makes it the one that signs (`cross_signed`:
    /// the same certificate signed by the root before it, in a rotation).
    pub async fn add_ca_root(
        &self,
        cert_pem: &str,
        sealed_key: &[u8],
        fingerprint: &str,
        not_after: &str,
        cross_signed: Option<&str>,
    ) -> Result<i64> {
        let _turn = self.writer.lock().await;
        let mut tx = self.pool().begin().await?;
        sqlx::query("UPDATE ca_roots SET active = 0").execute(&mut *tx).await?;
        let id = sqlx::query(
            "INSERT INTO ca_roots (cert_pem, sealed_key, fingerprint, created_at, not_after, active, cross_signed_pem) \
             VALUES (?, ?, ?, ?, ?, 1, ?)",
        )
        .bind(cert_pem)
        .bind(sealed_key)
        .bind(fingerprint)
        .bind(now())
        .bind(not_after)
        .bind(cross_signed)
        .execute(&mut *tx)
        .await?
        .last_insert_rowid();
        tx.commit().await?;
        Ok(id)
    }

    /// Ends a rotation: the roots that no longer sign are forgotten, and
    /// with them the cross-signed certificate that led to them.
    pub async fn retire_ca_roots(&self) -> Result<Vec<String>> {
        let _turn = self.writer.lock().await;
        let mut tx = self.pool().begin().await?;
        let gone: Vec<String> = sqlx::query_scalar("SELECT fingerprint FROM ca_roots WHERE active = 0 ORDER BY id")
            .fetch_all(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM ca_roots WHERE active = 0").execute(&mut *tx).await?;
        sqlx::query("UPDATE ca_roots SET cross_signed_pem = NULL").execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(gone)
    }

    /// Workload certificates from roots other than the signing one that
    /// are still valid: how many, and when the last of them expires. Rows
    /// recorded before roots were (migration 0005) count by issue time.
    pub async fn certificates_valid_from_other_roots(&self, signing: &SigningRoot) -> Result<(i64, Option<String>)> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n, MAX(not_after) AS last FROM certificates \
             WHERE (root <> ? OR (root IS NULL AND julianday(issued_at) < julianday(?))) \
             AND julianday(not_after) > julianday('now')",
        )
        .bind(&signing.fingerprint)
        .bind(&signing.since)
        .fetch_one(self.pool())
        .await?;
        Ok((row.try_get("n")?, row.try_get("last")?))
    }

    pub async fn record_certificate(&self, serial: &str, identity: &str, not_after: &str, root: &str) -> Result<()> {
        let _turn = self.writer.lock().await;
        sqlx::query("INSERT INTO certificates (serial, identity, issued_at, not_after, root) VALUES (?, ?, ?, ?, ?)")
            .bind(serial)
            .bind(identity)
            .bind(now())
            .bind(not_after)
            .bind(root)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// The latest certificates issued, newest first.
    pub async fn certificates(&self, limit: i64) -> Result<Vec<IssuedRecord>> {
        let rows = sqlx::query(
            "SELECT serial, identity, issued_at, not_after, root FROM certificates ORDER BY issued_at DESC LIMIT ?",
        )
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(IssuedRecord {
                    serial: r.try_get("serial")?,
                    identity: r.try_get("identity")?,
                    issued_at: r.try_get("issued_at")?,
                    not_after: r.try_get("not_after")?,
                    root: r.try_get("root")?,
                })
            })
            .collect()
    }

    /// Makes a join token for `scope`, valid for `ttl`: returns (id, the
    /// token, its expiry as RFC 3339). Only its hash is stored.
    pub async fn create_join_token(
        &self,
        scope: &JoinScope,
        ttl: std::time::Duration,
        single_use: bool,
    ) -> Result<(String, String, String)> {
        let token = format!("mgj_{}", hex::encode(rand::random::<[u8; 32]>()));
        let expires = chrono::Utc::now() + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::hours(1));
        let expires_at = expires.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let id = self.add_join_token(&token, scope, &expires_at, single_use).await?;
        Ok((id, token, expires_at))
    }

    /// Stores a join token (by its hash); returns its id.
    pub async fn add_join_token(
        &self,
        token: &str,
        scope: &JoinScope,
        expires_at: &str,
        single_use: bool,
    ) -> Result<String> {
        let _turn = self.writer.lock().await;
        let id = hex::encode(rand::random::<[u8; 6]>());
        sqlx::query(
            "INSERT INTO join_tokens (id, hash, namespace, service_account, service, created_at, expires_at, single_use) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&id)
        .bind(hash_token(token))
        .bind(&scope.namespace)
        .bind(&scope.service_account)
        .bind(&scope.service)
        .bind(now())
        .bind(expires_at)
        .bind(single_use)
        .execute(self.pool())
        .await?;
        Ok(id)
    }

    /// Uses a join token: checks it and counts the use in one transaction,
    /// so a single-use token admits exactly one agent even under a race.
    pub async fn redeem_join_token(&self, token: &str) -> Result<std::result::Result<JoinScope, JoinRefusal>> {
        let _turn = self.writer.lock().await;
        let mut tx = self.pool().begin().await?;
        let row = sqlx::query(
            "SELECT id, namespace, service_account, service, expires_at, single_use, uses, revoked_at \
             FROM join_tokens WHERE hash = ?",
        )
        .bind(hash_token(token))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(r) = row else { return Ok(Err(JoinRefusal::Unknown)) };
        let expires_at: String = r.try_get("expires_at")?;
        if r.try_get::<Option<String>, _>("revoked_at")?.is_some() {
            return Ok(Err(JoinRefusal::Revoked));
        }
        if expires_at <= now() {
            return Ok(Err(JoinRefusal::Expired));
        }
        if r.try_get::<bool, _>("single_use")? && r.try_get::<i64, _>("uses")? > 0 {
            return Ok(Err(JoinRefusal::Used));
        }
        let id: String = r.try_get("id")?;
        sqlx::query("UPDATE join_tokens SET uses = uses + 1, used_at = COALESCE(used_at, ?) WHERE id = ?")
            .bind(now())
            .bind(&id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Ok(JoinScope::from_row(&r)?))
    }

    pub async fn join_tokens(&self) -> Result<Vec<JoinTokenInfo>> {
        let rows = sqlx::query(
            "SELECT id, namespace, service_account, service, created_at, expires_at, single_use, uses, revoked_at \
             FROM join_tokens ORDER BY created_at",
        )
        .fetch_all(self.pool())
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(JoinTokenInfo {
                    id: r.try_get("id")?,
                    scope: JoinScope::from_row(&r)?,
                    created_at: r.try_get("created_at")?,
                    expires_at: r.try_get("expires_at")?,
                    single_use: r.try_get("single_use")?,
                    uses: r.try_get("uses")?,
                    revoked_at: r.try_get("revoked_at")?,
                })
            })
            .collect()
    }

    /// Revokes a join token; `false` if there is none with that id.
    pub async fn revoke_join_token(&self, id: &str) -> Result<bool> {
        let _turn = self.writer.lock().await;
        let done = sqlx::query("UPDATE join_tokens SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?")
            .bind(now())
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() > 0)
    }
}
