//! API keys of Consumers, kept by their SHA-256 only.

use sqlx::Row as _;

use super::{Result, Store, hash_token, now};

/// An API key as listed (never the key itself).
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyInfo {
    pub id: String,
    pub namespace: String,
    pub consumer: String,
    /// The key's first characters.
    pub prefix: String,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

impl Store {
    /// Makes a key for `namespace/consumer`: returns (id, the key). Only its hash is stored.
    pub async fn create_api_key(&self, namespace: &str, consumer: &str) -> Result<(String, String)> {
        use base64::Engine as _;
        let key =
            format!("mgk_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>()));
        let id = hex::encode(rand::random::<[u8; 6]>());
        let _turn = self.writer.lock().await;
        sqlx::query(
            "INSERT INTO api_keys (id, hash, namespace, consumer, prefix, created_at) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&id)
        .bind(hash_token(&key))
        .bind(namespace)
        .bind(consumer)
        .bind(&key[..10])
        .bind(now())
        .execute(self.pool())
        .await?;
        Ok((id, key))
    }

    /// Every key, newest first (`consumer`: only that consumer's).
    pub async fn api_keys(&self, consumer: Option<(&str, &str)>) -> Result<Vec<ApiKeyInfo>> {
        let rows = sqlx::query(
            "SELECT id, namespace, consumer, prefix, created_at, revoked_at FROM api_keys \
             WHERE (?1 IS NULL OR (namespace = ?1 AND consumer = ?2)) ORDER BY created_at DESC",
        )
        .bind(consumer.map(|c| c.0))
        .bind(consumer.map(|c| c.1))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ApiKeyInfo {
                    id: r.try_get("id")?,
                    namespace: r.try_get("namespace")?,
                    consumer: r.try_get("consumer")?,
                    prefix: r.try_get("prefix")?,
                    created_at: r.try_get("created_at")?,
                    revoked_at: r.try_get("revoked_at")?,
                })
            })
            .collect()
    }

    /// The hashes of keys not revoked, with their consumer: what the gateway checks keys against.
    pub async fn active_api_keys(&self) -> Result<Vec<(String, String, String)>> {
        let rows = sqlx::query("SELECT hash, namespace, consumer FROM api_keys WHERE revoked_at IS NULL")
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(|r| Ok((r.try_get("hash")?, r.try_get("namespace")?, r.try_get("consumer")?))).collect()
    }

    /// Revokes a key by id; false when there is no such key.
    pub async fn revoke_api_key(&self, id: &str) -> Result<bool> {
        let _turn = self.writer.lock().await;
        let done = sqlx::query("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL")
            .bind(now())
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() > 0)
    }
}
