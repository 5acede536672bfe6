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

/// What a user may do: `admin` everything (users too), `editor` change
/// configuration, `viewer` only read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Editor,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Editor => "editor",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "editor" => Some(Role::Editor),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// Who a token belongs to.
#[derive(Debug, Clone)]
pub struct TokenInfo {
    pub id: String,
    pub subject: String,
    pub purpose: String,
    /// The subject's role now (a token lasts no longer than its user).
    pub role: Role,
    /// When it was last seen (sessions: for idle expiry).
    pub last_used_at: Option<String>,
}

/// A user as listed (never the password hash).
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub name: String,
    pub role: Role,
    pub created_at: String,
}

/// An API token as listed (never the token).
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiToken {
    pub id: String,
    pub user: String,
    pub purpose: String,
    pub description: String,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub last_used_at: Option<String>,
}

impl Store {
    pub async fn user_exists(&self, name: &str) -> Result<bool> {
        let n: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE name = ?").bind(name).fetch_one(self.pool()).await?;
        Ok(n > 0)
    }

    pub async fn create_user(&self, name: &str, password: &str) -> Result<()> {
        self.add_user(name, password, Role::Admin).await.map(|_| ())
    }

    /// A new user; `false` if the name is taken.
    pub async fn add_user(&self, name: &str, password: &str, role: Role) -> Result<bool> {
        let hash = hash_password(password)?;
        let _turn = self.writer.lock().await;
        let done = sqlx::query(
            "INSERT INTO users (name, password_hash, created_at, role) VALUES (?, ?, ?, ?) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(hash)
        .bind(now())
        .bind(role.as_str())
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn users(&self) -> Result<Vec<User>> {
        let rows = sqlx::query("SELECT name, role, created_at FROM users ORDER BY name").fetch_all(self.pool()).await?;
        rows.iter()
            .map(|r| {
                let role: String = r.try_get("role")?;
                Ok(User {
                    name: r.try_get("name")?,
                    role: Role::parse(&role).ok_or_else(|| StoreError::Corrupt(format!("role {role:?}")))?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    /// Changes a user's password and/or role; `false` if there is no such
    /// user. A new password ends the user's sessions.
    pub async fn update_user(&self, name: &str, password: Option<&str>, role: Option<Role>) -> Result<bool> {
        let hash = password.map(hash_password).transpose()?;
        let _turn = self.writer.lock().await;
        let mut tx = self.pool().begin().await?;
        let found: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE name = ?").bind(name).fetch_one(&mut *tx).await?;
        if found == 0 {
            return Ok(false);
        }
        if let Some(hash) = hash {
            sqlx::query("UPDATE users SET password_hash = ? WHERE name = ?")
                .bind(hash)
                .bind(name)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM tokens WHERE subject = ? AND purpose = 'session'")
                .bind(name)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(role) = role {
            sqlx::query("UPDATE users SET role = ? WHERE name = ?")
                .bind(role.as_str())
                .bind(name)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Removes a user and every token of theirs; `false` if there is no such user.
    pub async fn delete_user(&self, name: &str) -> Result<bool> {
        let _turn = self.writer.lock().await;
        let mut tx = self.pool().begin().await?;
        let gone = sqlx::query("DELETE FROM users WHERE name = ?").bind(name).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM tokens WHERE subject = ?").bind(name).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(gone.rows_affected() == 1)
    }

    /// Registers an API token for a user, with a description.
    pub async fn add_api_token(
        &self,
        token: &str,
        user: &str,
        description: &str,
        expires_at: Option<&str>,
    ) -> Result<String> {
        let id = self.add_token(token, user, "api", expires_at).await?;
        let _turn = self.writer.lock().await;
        sqlx::query("UPDATE tokens SET description = ? WHERE id = ?")
            .bind(description)
            .bind(&id)
            .execute(self.pool())
            .await?;
        Ok(id)
    }

    /// API tokens (not sessions), of one user or of all.
    pub async fn api_tokens(&self, user: Option<&str>) -> Result<Vec<ApiToken>> {
        let rows = sqlx::query(
            "SELECT id, subject, purpose, description, created_at, expires_at, last_used_at FROM tokens \
             WHERE purpose != 'session' AND (?1 IS NULL OR subject = ?1) ORDER BY created_at",
        )
        .bind(user)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ApiToken {
                    id: r.try_get("id")?,
                    user: r.try_get("subject")?,
                    purpose: r.try_get("purpose")?,
                    description: r.try_get("description")?,
                    created_at: r.try_get("created_at")?,
                    expires_at: r.try_get("expires_at")?,
                    last_used_at: r.try_get("last_used_at")?,
                })
            })
            .collect()
    }

    /// Revokes a token by id (of `user`, when given); `false` if there is none.
    pub async fn revoke_token_id(&self, id: &str, user: Option<&str>) -> Result<bool> {
        let _turn = self.writer.lock().await;
        let gone = sqlx::query("DELETE FROM tokens WHERE id = ?1 AND (?2 IS NULL OR subject = ?2)")
            .bind(id)
            .bind(user)
            .execute(self.pool())
            .await?;
        Ok(gone.rows_affected() == 1)
    }

    /// Notes that a token was used now.
    pub async fn touch_token(&self, id: &str) -> Result<()> {
        let _turn = self.writer.lock().await;
        sqlx::query("UPDATE tokens SET last_used_at = ? WHERE id = ?")
            .bind(now())
            .bind(id)
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
            "SELECT t.id, t.subject, t.purpose, t.last_used_at, u.role FROM tokens t JOIN users u ON u.name = t.subject \
             WHERE t.hash = ? AND (t.expires_at IS NULL OR t.expires_at > ?)",
        )
        .bind(hash_token(token))
        .bind(now())
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| {
            let role: String = r.try_get("role")?;
            Ok(TokenInfo {
                id: r.try_get("id")?,
                subject: r.try_get("subject")?,
                purpose: r.try_get("purpose")?,
                role: Role::parse(&role).ok_or_else(|| StoreError::Corrupt(format!("role {role:?}")))?,
                last_used_at: r.try_get("last_used_at")?,
            })
        })
        .transpose()
    }

    pub async fn revoke_token(&self, token: &str) -> Result<()> {
        let _turn = self.writer.lock().await;
        sqlx::query("DELETE FROM tokens WHERE hash = ?").bind(hash_token(token)).execute(self.pool()).await?;
        Ok(())
    }
}

fn hash_password(password: &str) -> Result<String> {
    let salt = SaltString::from_b64(&base64_salt()).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| StoreError::Corrupt(format!("hashing password: {e}")))?
        .to_string())
}

fn base64_salt() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(rand::random::<[u8; 16]>())
}
