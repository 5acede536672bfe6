//! Opening the SQLite database the one way meshgate does it.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use super::Store;

/// Opens (creating if needed) the database at `path`: file mode 0600, WAL,
/// `synchronous=FULL`, foreign keys, a busy timeout, and migrations applied.
///
/// `FULL` rather than `NORMAL`: in WAL mode `NORMAL` may lose the last
/// commits on power loss, and an acknowledged configuration change must
/// survive that. Writes here are rare, so the extra fsync per commit is cheap.
pub async fn open(path: &Path) -> anyhow::Result<Store> {
    create_private_file(path)?;
    let options = SqliteConnectOptions::from_str("sqlite://")?
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(5));
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .min_connections(1)
        .connect_with(options)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open database {}: {e}", path.display()))?;
    sqlx::migrate!("../migrations")
        .run(&pool)
        .await
        .map_err(|e| anyhow::anyhow!("cannot migrate database {}: {e}", path.display()))?;
    // The WAL and shared-memory files are created by SQLite with the main
    // file's mode, so 0600 carries over.
    Ok(Store::from_pool(pool))
}

#[cfg(unix)]
fn create_private_file(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot create database {}: {e}", path.display()))?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

#[cfg(not(unix))]
fn create_private_file(_path: &Path) -> anyhow::Result<()> {
    Ok(())
}
