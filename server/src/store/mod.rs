//! The configuration store: the only code that runs SQL.
//!
//! Every write is one transaction that changes `resources` and appends one
//! `revisions` row per object changed, so history, rollback and the audit
//! page all read the same log. Writes are serialized by a mutex: SQLite has
//! one writer anyway, and taking turns here avoids lock-upgrade deadlocks
//! between deferred transactions.

mod apikeys;
mod auth;
mod mesh;
mod open;

use std::collections::BTreeMap;

use meshgate_model::{Kind, Resource};
use serde_json::Value;
use sqlx::{Row, SqlitePool, sqlite::SqliteRow};
use tokio::sync::Mutex;

pub use apikeys::ApiKeyInfo;
pub use auth::{ApiToken, Role, TokenInfo, User, hash_token, new_token};
pub use mesh::{IssuedRecord, JoinRefusal, JoinScope, JoinTokenInfo, SigningRoot, StoredRoot};
pub use open::open;

/// Errors from the store, mapped to HTTP statuses by `api::error`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{kind} {namespace}/{name} not found")]
    NotFound { kind: Kind, namespace: String, name: String },
    #[error("{kind} {namespace}/{name} already exists")]
    AlreadyExists { kind: Kind, namespace: String, name: String },
    #[error(
        "{kind} {namespace}/{name} was changed: your copy is resourceVersion {given}, the stored one is {current}; get it again and reapply your change"
    )]
    Conflict { kind: Kind, namespace: String, name: String, given: String, current: i64 },
    #[error("revision {0} does not exist")]
    NoSuchRevision(i64),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What a write did to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Created,
    Configured,
    Unchanged,
    Deleted,
}

/// One object as stored, with its server-managed metadata. The body stays
/// the JSON text the store wrote (canonical: produced from the typed
/// resource), so listing thousands of objects copies text instead of
/// parsing and re-serializing every body.
#[derive(Debug, Clone)]
pub struct Object {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub body: String,
    pub resource_version: i64,
    pub generation: i64,
    pub created_at: String,
}

impl Object {
    /// Writes the document form users see and apply (apiVersion, kind,
    /// metadata, spec) as JSON to `out`.
    pub fn write_document(&self, out: &mut String) {
        let text = |s: &str| serde_json::to_string(s).unwrap_or_default();
        let map = |m: &BTreeMap<String, String>| serde_json::to_string(m).unwrap_or_default();
        out.push_str(&format!(
            "{{\"apiVersion\":{},\"kind\":{},\"metadata\":{{\"name\":{},\"namespace\":{}",
            text(self.kind.api_version()),
            text(self.kind.name()),
            text(&self.name),
            text(&self.namespace)
        ));
        if !self.labels.is_empty() {
            out.push_str(&format!(",\"labels\":{}", map(&self.labels)));
        }
        if !self.annotations.is_empty() {
            out.push_str(&format!(",\"annotations\":{}", map(&self.annotations)));
        }
        out.push_str(&format!(
            ",\"resourceVersion\":\"{}\",\"generation\":{},\"creationTimestamp\":{},\"uid\":{}}}",
            self.resource_version,
            self.generation,
            text(&self.created_at),
            text(&self.uid)
        ));
        // A Secret has no spec: its stored body holds its top-level fields.
        match self.body.trim().strip_prefix('{').map(|b| b.trim_start()) {
            Some(fields) if self.kind == Kind::Secret && fields != "}" => {
                out.push(',');
                out.push_str(fields);
            }
            Some(_) if self.kind == Kind::Secret => out.push('}'),
            _ => {
                out.push_str(",\"spec\":");
                out.push_str(&self.body);
                out.push('}');
            }
        }
    }

    /// The document form as a JSON value.
    pub fn to_document(&self) -> Value {
        let mut out = String::with_capacity(self.body.len() + 256);
        self.write_document(&mut out);
        serde_json::from_str(&out).unwrap_or(Value::Null)
    }

    /// The body parsed: the spec, or a Secret's type and data.
    pub fn body_value(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// Parses the object back into a typed resource.
    pub fn to_resource(&self) -> Result<Resource> {
        let body = meshgate_model::Body::from_stored(self.kind, self.body_value()).map_err(|errs| {
            let first = errs.first().map(ToString::to_string).unwrap_or_default();
            StoreError::Corrupt(format!("{} {}/{}: {first}", self.kind, self.namespace, self.name))
        })?;
        let metadata = meshgate_model::ObjectMeta {
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            labels: self.labels.clone(),
            annotations: self.annotations.clone(),
            resource_version: Some(self.resource_version.to_string()),
            generation: Some(self.generation),
            creation_timestamp: Some(self.created_at.clone()),
            uid: Some(self.uid.clone()),
            ..Default::default()
        };
        Ok(Resource { kind: self.kind, metadata, body })
    }

    fn from_row(row: &SqliteRow) -> Result<Object> {
        let kind_name: String = row.try_get("kind")?;
        let kind = Kind::lookup(&kind_name).ok_or_else(|| StoreError::Corrupt(format!("unknown kind {kind_name}")))?;
        let map = |col: &str| -> Result<BTreeMap<String, String>> {
            let text: String = row.try_get(col)?;
            serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("column {col}: {e}")))
        };
        Ok(Object {
            kind,
            namespace: row.try_get("namespace")?,
            name: row.try_get("name")?,
            uid: row.try_get("uid")?,
            labels: map("labels")?,
            annotations: map("annotations")?,
            body: row.try_get("body")?,
            resource_version: row.try_get("resource_version")?,
            generation: row.try_get("generation")?,
            created_at: row.try_get("created_at")?,
        })
    }
}

/// One entry of the change log.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Revision {
    pub revision: i64,
    pub txn: i64,
    pub at: String,
    pub actor: String,
    pub op: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<Value>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// A write's result for one object.
#[derive(Debug, Clone)]
pub struct Change {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    pub outcome: Outcome,
    /// The revision this change appended; `None` when unchanged.
    pub revision: Option<i64>,
    pub object: Option<Object>,
}

/// Filters for [`Store::history`].
#[derive(Debug, Clone, Default)]
pub struct HistoryFilter {
    pub kind: Option<Kind>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub limit: Option<i64>,
    pub with_objects: bool,
}

/// How a PUT treats an existing object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// Create or update (apply).
    Upsert,
    /// Must not exist yet (POST).
    Create,
    /// Rollback: like upsert, and an object brought back keeps its old
    /// `uid` and `creationTimestamp` (so VirtualService merge order is as it was).
    Restore,
}

#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
    writer: std::sync::Arc<Mutex<()>>,
}

const SELECT_OBJECT: &str = "SELECT kind, namespace, name, uid, labels, annotations, body, resource_version, generation, created_at FROM resources";

impl Store {
    pub fn from_pool(pool: SqlitePool) -> Store {
        Store { pool, writer: Default::default() }
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Closes every connection, checkpointing the WAL.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub async fn get(&self, kind: Kind, namespace: &str, name: &str) -> Result<Option<Object>> {
        let row = sqlx::query(&format!("{SELECT_OBJECT} WHERE kind = ? AND namespace = ? AND name = ?"))
            .bind(kind.name())
            .bind(namespace)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(Object::from_row).transpose()
    }

    /// Lists objects of one kind (or all kinds), in one namespace or all,
    /// ordered by namespace and name.
    pub async fn list(&self, kind: Option<Kind>, namespace: Option<&str>) -> Result<Vec<Object>> {
        let sql = format!(
            "{SELECT_OBJECT} WHERE (?1 IS NULL OR kind = ?1) AND (?2 IS NULL OR namespace = ?2) ORDER BY kind, namespace, name"
        );
        let rows = sqlx::query(&sql).bind(kind.map(Kind::name)).bind(namespace).fetch_all(&self.pool).await?;
        rows.iter().map(Object::from_row).collect()
    }

    /// Every stored resource, typed: what the analyzer and the control plane read.
    pub async fn all_resources(&self) -> Result<Vec<Resource>> {
        self.list(None, None).await?.iter().map(Object::to_resource).collect()
    }

    /// The highest revision written so far (0 for an empty store).
    pub async fn current_revision(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT COALESCE(MAX(revision), 0) FROM revisions").fetch_one(&self.pool).await?)
    }

    /// Writes resources in one transaction: all of them or none. An object
    /// whose document carries a `resourceVersion` must still be at that
    /// version (409 otherwise); an identical object is left `unchanged`.
    pub async fn apply(&self, resources: &[Resource], actor: &str, mode: WriteMode) -> Result<Vec<Change>> {
        let _turn = self.writer.lock().await;
        let mut tx = self.pool.begin().await?;
        let txn = next_txn(&mut tx).await?;
        let mut changes = Vec::with_capacity(resources.len());
        for r in resources {
            changes.push(write_one(&mut tx, r, actor, txn, mode, "").await?);
        }
        tx.commit().await?;
        Ok(changes)
    }

    /// Deletes one object. `expected_version`, when given, must match.
    pub async fn delete(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        actor: &str,
        expected_version: Option<&str>,
    ) -> Result<Change> {
        let _turn = self.writer.lock().await;
        let mut tx = self.pool.begin().await?;
        let current = get_in(&mut tx, kind, namespace, name).await?;
        let Some(current) = current else {
            return Err(StoreError::NotFound { kind, namespace: namespace.into(), name: name.into() });
        };
        if let Some(given) = expected_version {
            check_version(&current, given)?;
        }
        let txn = next_txn(&mut tx).await?;
        let revision = delete_in(&mut tx, &current, actor, txn, "").await?;
        tx.commit().await?;
        Ok(Change {
            kind,
            namespace: namespace.into(),
            name: name.into(),
            outcome: Outcome::Deleted,
            revision: Some(revision),
            object: Some(current),
        })
    }

    pub async fn history(&self, f: &HistoryFilter) -> Result<Vec<Revision>> {
        let sql = "SELECT revision, txn, at, actor, op, kind, namespace, name, before, after, reason FROM revisions \
                   WHERE (?1 IS NULL OR kind = ?1) AND (?2 IS NULL OR namespace = ?2) AND (?3 IS NULL OR name = ?3) \
                   ORDER BY revision DESC LIMIT ?4";
        let rows = sqlx::query(sql)
            .bind(f.kind.map(Kind::name))
            .bind(f.namespace.as_deref())
            .bind(f.name.as_deref())
            .bind(f.limit.unwrap_or(-1))
            .fetch_all(&self.pool)
            .await?;
        let mut out: Vec<Revision> =
            rows.iter().map(|r| revision_from_row(r, f.with_objects)).collect::<Result<_>>()?;
        out.reverse();
        Ok(out)
    }

    pub async fn revision(&self, revision: i64) -> Result<Revision> {
        let row = sqlx::query(
            "SELECT revision, txn, at, actor, op, kind, namespace, name, before, after, reason FROM revisions WHERE revision = ?",
        )
        .bind(revision)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(r) => revision_from_row(&r, true),
            None => Err(StoreError::NoSuchRevision(revision)),
        }
    }

    /// Puts the whole configuration back as it was right after `revision`,
    /// by writing new revisions (history is never rewritten). Objects
    /// created later are deleted; objects changed or deleted later get
    /// their state at `revision` back.
    pub async fn rollback(&self, revision: i64, actor: &str) -> Result<Vec<Change>> {
        let _turn = self.writer.lock().await;
        let mut tx = self.pool.begin().await?;
        let exists: Option<i64> = sqlx::query_scalar("SELECT revision FROM revisions WHERE revision = ?")
            .bind(revision)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Err(StoreError::NoSuchRevision(revision));
        }
        // For every object touched after `revision`: its last state at or before it.
        let rows = sqlx::query(
            "SELECT t.kind, t.namespace, t.name, \
                    (SELECT r.after FROM revisions r WHERE r.kind = t.kind AND r.namespace = t.namespace AND r.name = t.name \
                       AND r.revision <= ?1 ORDER BY r.revision DESC LIMIT 1) AS state \
             FROM (SELECT DISTINCT kind, namespace, name FROM revisions WHERE revision > ?1) t \
             ORDER BY t.kind, t.namespace, t.name",
        )
        .bind(revision)
        .fetch_all(&mut *tx)
        .await?;
        let txn = next_txn(&mut tx).await?;
        let reason = format!("rollback to revision {revision}");
        let mut changes = Vec::new();
        for row in rows {
            let kind_name: String = row.try_get("kind")?;
            let kind =
                Kind::lookup(&kind_name).ok_or_else(|| StoreError::Corrupt(format!("unknown kind {kind_name}")))?;
            let namespace: String = row.try_get("namespace")?;
            let name: String = row.try_get("name")?;
            let state: Option<String> = row.try_get("state")?;
            match state {
                Some(doc) => {
                    let value: Value = serde_json::from_str(&doc)
                        .map_err(|e| StoreError::Corrupt(format!("revision document: {e}")))?;
                    let mut resource = Resource::from_value(value, &namespace).map_err(|errs| {
                        StoreError::Corrupt(format!("{kind} {namespace}/{name} at revision {revision}: {:?}", errs))
                    })?;
                    resource.metadata.resource_version = None;
                    let change = write_one(&mut tx, &resource, actor, txn, WriteMode::Restore, &reason).await?;
                    if change.outcome != Outcome::Unchanged {
                        changes.push(change);
                    }
                }
                None => {
                    if let Some(current) = get_in(&mut tx, kind, &namespace, &name).await? {
                        let rev = delete_in(&mut tx, &current, actor, txn, &reason).await?;
                        changes.push(Change {
                            kind,
                            namespace,
                            name,
                            outcome: Outcome::Deleted,
                            revision: Some(rev),
                            object: Some(current),
                        });
                    }
                }
            }
        }
        tx.commit().await?;
        Ok(changes)
    }

    /// Counts of stored objects per kind, for metrics.
    pub async fn counts(&self) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query("SELECT kind, COUNT(*) AS n FROM resources GROUP BY kind").fetch_all(&self.pool).await?;
        rows.iter().map(|r| Ok((r.try_get("kind")?, r.try_get("n")?))).collect()
    }
}

type Tx<'a> = sqlx::Transaction<'a, sqlx::Sqlite>;

async fn next_txn(tx: &mut Tx<'_>) -> Result<i64> {
    Ok(sqlx::query_scalar("SELECT COALESCE(MAX(txn), 0) + 1 FROM revisions").fetch_one(&mut **tx).await?)
}

async fn get_in(tx: &mut Tx<'_>, kind: Kind, namespace: &str, name: &str) -> Result<Option<Object>> {
    let row = sqlx::query(&format!("{SELECT_OBJECT} WHERE kind = ? AND namespace = ? AND name = ?"))
        .bind(kind.name())
        .bind(namespace)
        .bind(name)
        .fetch_optional(&mut **tx)
        .await?;
    row.as_ref().map(Object::from_row).transpose()
}

fn check_version(current: &Object, given: &str) -> Result<()> {
    if given != current.resource_version.to_string() {
        return Err(StoreError::Conflict {
            kind: current.kind,
            namespace: current.namespace.clone(),
            name: current.name.clone(),
            given: given.to_string(),
            current: current.resource_version,
        });
    }
    Ok(())
}

pub(crate) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

async fn write_one(
    tx: &mut Tx<'_>,
    r: &Resource,
    actor: &str,
    txn: i64,
    mode: WriteMode,
    reason: &str,
) -> Result<Change> {
    let (kind, namespace, name) = (r.kind, r.namespace().to_string(), r.name().to_string());
    let current = get_in(tx, kind, &namespace, &name).await?;
    let body = r.body.to_value().to_string();
    let labels = serde_json::to_string(&r.metadata.labels).unwrap_or_else(|_| "{}".into());
    let annotations = serde_json::to_string(&r.metadata.annotations).unwrap_or_else(|_| "{}".into());
    let at = now();
    match current {
        Some(cur) => {
            if mode == WriteMode::Create {
                return Err(StoreError::AlreadyExists { kind, namespace, name });
            }
            if let Some(given) = &r.metadata.resource_version {
                check_version(&cur, given)?;
            }
            if cur.body == body && cur.labels == r.metadata.labels && cur.annotations == r.metadata.annotations {
                return Ok(Change {
                    kind,
                    namespace,
                    name,
                    outcome: Outcome::Unchanged,
                    revision: None,
                    object: Some(cur),
                });
            }
            let before = cur.to_document().to_string();
            let revision = append_revision(tx, txn, &at, actor, "update", r, Some(&before), reason).await?;
            let updated = Object {
                labels: r.metadata.labels.clone(),
                annotations: r.metadata.annotations.clone(),
                body,
                resource_version: revision,
                generation: cur.generation + 1,
                ..cur
            };
            sqlx::query(
                "UPDATE resources SET labels = ?, annotations = ?, body = ?, resource_version = ?, generation = ?, updated_at = ? \
                 WHERE kind = ? AND namespace = ? AND name = ?",
            )
            .bind(&labels)
            .bind(&annotations)
            .bind(&updated.body)
            .bind(revision)
            .bind(updated.generation)
            .bind(&at)
            .bind(kind.name())
            .bind(&namespace)
            .bind(&name)
            .execute(&mut **tx)
            .await?;
            set_after(tx, revision, &updated).await?;
            Ok(Change {
                kind,
                namespace,
                name,
                outcome: Outcome::Configured,
                revision: Some(revision),
                object: Some(updated),
            })
        }
        None => {
            if let Some(given) = &r.metadata.resource_version {
                // The caller edits a copy of an object that has since been deleted.
                return Err(StoreError::Conflict { kind, namespace, name, given: given.clone(), current: 0 });
            }
            let revision = append_revision(tx, txn, &at, actor, "create", r, None, reason).await?;
            let restore = mode == WriteMode::Restore;
            let created_at = r.metadata.creation_timestamp.clone().filter(|_| restore).unwrap_or_else(|| at.clone());
            let created = Object {
                kind,
                namespace: namespace.clone(),
                name: name.clone(),
                uid: r.metadata.uid.clone().filter(|_| restore).unwrap_or_else(new_uid),
                labels: r.metadata.labels.clone(),
                annotations: r.metadata.annotations.clone(),
                body,
                resource_version: revision,
                generation: 1,
                created_at,
            };
            sqlx::query(
                "INSERT INTO resources (kind, namespace, name, uid, labels, annotations, body, resource_version, generation, created_at, updated_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?)",
            )
            .bind(kind.name())
            .bind(&namespace)
            .bind(&name)
            .bind(&created.uid)
            .bind(&labels)
            .bind(&annotations)
            .bind(&created.body)
            .bind(revision)
            .bind(&created.created_at)
            .bind(&at)
            .execute(&mut **tx)
            .await?;
            set_after(tx, revision, &created).await?;
            Ok(Change {
                kind,
                namespace,
                name,
                outcome: Outcome::Created,
                revision: Some(revision),
                object: Some(created),
            })
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn append_revision(
    tx: &mut Tx<'_>,
    txn: i64,
    at: &str,
    actor: &str,
    op: &str,
    r: &Resource,
    before: Option<&str>,
    reason: &str,
) -> Result<i64> {
    let revision: i64 = sqlx::query_scalar(
        "INSERT INTO revisions (txn, at, actor, op, kind, namespace, name, before, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING revision",
    )
    .bind(txn)
    .bind(at)
    .bind(actor)
    .bind(op)
    .bind(r.kind.name())
    .bind(r.namespace())
    .bind(r.name())
    .bind(before)
    .bind(reason)
    .fetch_one(&mut **tx)
    .await?;
    Ok(revision)
}

/// Records the object as it is after the change (with its new version),
/// which is what rollback restores.
async fn set_after(tx: &mut Tx<'_>, revision: i64, object: &Object) -> Result<()> {
    sqlx::query("UPDATE revisions SET after = ? WHERE revision = ?")
        .bind(object.to_document().to_string())
        .bind(revision)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn delete_in(tx: &mut Tx<'_>, current: &Object, actor: &str, txn: i64, reason: &str) -> Result<i64> {
    let revision: i64 = sqlx::query_scalar(
        "INSERT INTO revisions (txn, at, actor, op, kind, namespace, name, before, reason) VALUES (?, ?, ?, 'delete', ?, ?, ?, ?, ?) RETURNING revision",
    )
    .bind(txn)
    .bind(now())
    .bind(actor)
    .bind(current.kind.name())
    .bind(&current.namespace)
    .bind(&current.name)
    .bind(current.to_document().to_string())
    .bind(reason)
    .fetch_one(&mut **tx)
    .await?;
    sqlx::query("DELETE FROM resources WHERE kind = ? AND namespace = ? AND name = ?")
        .bind(current.kind.name())
        .bind(&current.namespace)
        .bind(&current.name)
        .execute(&mut **tx)
        .await?;
    Ok(revision)
}

fn revision_from_row(row: &SqliteRow, with_objects: bool) -> Result<Revision> {
    let doc = |col: &str| -> Result<Option<Value>> {
        if !with_objects {
            return Ok(None);
        }
        let text: Option<String> = row.try_get(col)?;
        text.map(|t| serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(format!("revision {col}: {e}"))))
            .transpose()
    };
    Ok(Revision {
        revision: row.try_get("revision")?,
        txn: row.try_get("txn")?,
        at: row.try_get("at")?,
        actor: row.try_get("actor")?,
        op: row.try_get("op")?,
        kind: row.try_get("kind")?,
        namespace: row.try_get("namespace")?,
        name: row.try_get("name")?,
        before: doc("before")?,
        after: doc("after")?,
        reason: row.try_get("reason")?,
    })
}

fn new_uid() -> String {
    let b: [u8; 16] = rand::random();
    format!(
        "{}-{}-{}-{}-{}",
        hex::encode(&b[0..4]),
        hex::encode(&b[4..6]),
        hex::encode(&b[6..8]),
        hex::encode(&b[8..10]),
        hex::encode(&b[10..16])
    )
}

#[cfg(test)]
mod tests;
