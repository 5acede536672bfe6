//! Users and API tokens. Passwords are kept as argon2id hashes; tokens as
//! SHA-256 digests (they are 256-bit random, so a slow hash buys nothing).

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use sha2::{Digest, Sha256};
use sqlx::Row;

use super::{Result, Store, StoreError, now};

/// A new random API token: `mg_` and 64 hex digits.
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("mg_{}", hex::encode(bytes))
}

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Who a token belongs to.
#[derive(Debug, Clone)]
pub struct TokenInfo {
    pub id: String,
    pub subject: String,
    pub purpose: String,
}

impl Store {
    pub async fn user_exists(&self, name: &str) -> Result<bool> {
        let n: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE name = ?").bind(name).fetch_one(self.pool()).await?;
        Ok(n > 0)
    }

    pub async fn create_user(&self, name: &str, password: &str) -> Result<()> {
        let _turn = self.writer.lock().await;
        let salt = SaltString::from_b64(&base64_salt()).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let hash = Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map_err(|e| StoreError::Corrupt(format!("hashing password: {e}")))?
            .to_string();
        sqlx::query("INSERT INTO users (name, password_hash, created_at) VALUES (?, ?, ?)")
            .bind(name)
            .bind(hash)
            .bind(now())
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Checks a password; `false` for an unknown user or a wrong password.
    pub async fn verify_password(&self, name: &str, password: &str) -> Result<bool> {
        let hash: Option<String> = sqlx::query_scalar("SELECT password_hash FROM users WHERE name = ?")
            .bind(name)
            .fetch_optional(self.pool())
            .await?;
        let Some(hash) = hash else { return Ok(false) };
        let parsed =
            PasswordHash::new(&hash).map_err(|e| StoreError::Corrupt(format!("password hash of {name}: {e}")))?;
        Ok(Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
    }

    /// Registers a token (by its hash) for `subject`.
    pub async fn add_token(
        &self,
        token: &str,
        subject: &str,
        purpose: &str,
        expires_at: Option<&str>,
    ) -> Result<String> {
        // Writes take turns with resource writes (see `Store`), so none fails with SQLITE_BUSY.
        let _turn = self.writer.lock().await;
        let id = hex::encode(rand::random::<[u8; 8]>());
        sqlx::query(
            "INSERT INTO tokens (id, hash, subject, purpose, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?) \
             ON CONFLICT (hash) DO NOTHING",
        )
        .bind(&id)
        .bind(hash_token(token))
        .bind(subject)
        .bind(purpose)
        .bind(now())
        .bind(expires_at)
        .execute(self.pool())
        .await?;
        Ok(id)
    }

    /// Looks a presented token up; `None` if unknown or expired.
    pub async fn find_token(&self, token: &str) -> Result<Option<TokenInfo>> {
        let row = sqlx::query(
            "SELECT id, subject, purpose FROM tokens WHERE hash = ? AND (expires_at IS NULL OR expires_at > ?)",
        )
        .bind(hash_token(token))
        .bind(now())
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| {
            Ok(TokenInfo { id: r.try_get("id")?, subject: r.try_get("subject")?, purpose: r.try_get("purpose")? })
        })
        .transpose()
    }

    pub async fn revoke_token(&self, token: &str) -> Result<()> {
        let _turn = self.writer.lock().await;
        sqlx::query("DELETE FROM tokens WHERE hash = ?").bind(hash_token(token)).execute(self.pool()).await?;
        Ok(())
    }
}

fn base64_salt() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(rand::random::<[u8; 16]>())
}
