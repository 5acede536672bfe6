//! Store tests on a real SQLite database per test (`#[sqlx::test]`).

use meshgate_model::{Kind, Resource};
use sqlx::SqlitePool;

use super::*;

fn vs(name: &str, weight_v1: i32) -> Resource {
    let yaml = format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  hosts: [user-service]\n  http:\n  - route:\n    - destination: {{host: user-service, subset: v1}}\n      weight: {weight_v1}\n    - destination: {{host: user-service, subset: v2}}\n      weight: {}\n",
        100 - weight_v1
    );
    meshgate_model::decode("test", &yaml, "default").unwrap().remove(0)
}

#[sqlx::test(migrations = "../migrations")]
async fn apply_creates_then_configures_then_is_unchanged(pool: SqlitePool) {
    let store = Store::from_pool(pool);
    let c = store.apply(&[vs("a", 80)], "alice", WriteMode::Upsert).await.unwrap();
    assert_eq!(c[0].outcome, Outcome::Created);
    assert_eq!(c[0].revision, Some(1));
    let c = store.apply(&[vs("a", 90)], "bob", WriteMode::Upsert).await.unwrap();
    assert_eq!(c[0].outcome, Outcome::Configured);
    let c = store.apply(&[vs("a", 90)], "bob", WriteMode::Upsert).await.unwrap();
    assert_eq!(c[0].outcome, Outcome::Unchanged);
    assert_eq!(c[0].revision, None);

    let obj = store.get(Kind::VirtualService, "default", "a").await.unwrap().unwrap();
    assert_eq!(obj.resource_version, 2);
    assert_eq!(obj.generation, 2);
    assert_eq!(obj.body_value()["http"][0]["route"][0]["weight"], 90);

    let h = store.history(&HistoryFilter { with_objects: true, ..Default::default() }).await.unwrap();
    assert_eq!(h.len(), 2);
    assert_eq!((h[0].op.as_str(), h[0].actor.as_str()), ("create", "alice"));
    assert_eq!((h[1].op.as_str(), h[1].actor.as_str()), ("update", "bob"));
    assert_eq!(h[1].before.as_ref().unwrap()["spec"]["http"][0]["route"][0]["weight"], 80);
    assert_eq!(h[1].after.as_ref().unwrap()["spec"]["http"][0]["route"][0]["weight"], 90);
}

#[sqlx::test(migrations = "../migrations")]
async fn stale_resource_version_conflicts(pool: SqlitePool) {
    let store = Store::from_pool(pool);
    store.apply(&[vs("a", 80)], "t", WriteMode::Upsert).await.unwrap();
    let mut stale = vs("a", 70);
    stale.metadata.resource_version = Some("1".into());
    store.apply(&[stale.clone()], "t", WriteMode::Upsert).await.unwrap();
    // Now at version 2; writing with version 1 again must fail and change nothing.
    stale.body = vs("a", 60).body;
    let err = store.apply(&[stale], "t", WriteMode::Upsert).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { current: 2, .. }), "{err}");
    let obj = store.get(Kind::VirtualService, "default", "a").await.unwrap().unwrap();
    assert_eq!(obj.body_value()["http"][0]["route"][0]["weight"], 70);
}

#[sqlx::test(migrations = "../migrations")]
async fn a_failing_write_leaves_nothing_behind(pool: SqlitePool) {
    let store = Store::from_pool(pool);
    store.apply(&[vs("exists", 80)], "t", WriteMode::Upsert).await.unwrap();
    // "new" would be created, but "exists" fails in Create mode: neither lands.
    let err = store.apply(&[vs("new", 50), vs("exists", 50)], "t", WriteMode::Create).await.unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists { .. }));
    assert!(store.get(Kind::VirtualService, "default", "new").await.unwrap().is_none());
    assert_eq!(store.current_revision().await.unwrap(), 1);
}

#[sqlx::test(migrations = "../migrations")]
async fn rollback_restores_the_whole_configuration(pool: SqlitePool) {
    let store = Store::from_pool(pool);
    store.apply(&[vs("a", 80)], "t", WriteMode::Upsert).await.unwrap(); // 1
    store.apply(&[vs("b", 50)], "t", WriteMode::Upsert).await.unwrap(); // 2
    store.apply(&[vs("a", 10)], "t", WriteMode::Upsert).await.unwrap(); // 3
    store.delete(Kind::VirtualService, "default", "b", "t", None).await.unwrap(); // 4
    store.apply(&[vs("c", 50)], "t", WriteMode::Upsert).await.unwrap(); // 5

    let changes = store.rollback(2, "admin").await.unwrap();
    let mut summary: Vec<(String, Outcome)> = changes.iter().map(|c| (c.name.clone(), c.outcome)).collect();
    summary.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        summary,
        [
            ("a".to_string(), Outcome::Configured),
            ("b".to_string(), Outcome::Created),
            ("c".to_string(), Outcome::Deleted)
        ]
    );
    let a = store.get(Kind::VirtualService, "default", "a").await.unwrap().unwrap();
    assert_eq!(a.body_value()["http"][0]["route"][0]["weight"], 80);
    let b = store.get(Kind::VirtualService, "default", "b").await.unwrap().unwrap();
    let b_at_2 = &store.revision(2).await.unwrap().after.unwrap()["metadata"];
    assert_eq!(b.uid, b_at_2["uid"].as_str().unwrap(), "a restored object keeps its identity");
    assert_eq!(b.created_at, b_at_2["creationTimestamp"].as_str().unwrap());
    assert!(store.get(Kind::VirtualService, "default", "c").await.unwrap().is_none());
    // History is appended to, never rewritten.
    let h = store.history(&HistoryFilter::default()).await.unwrap();
    assert_eq!(h.len(), 8);
    assert!(h[5..].iter().all(|r| r.reason == "rollback to revision 2" && r.actor == "admin"));

    assert!(matches!(store.rollback(99, "t").await.unwrap_err(), StoreError::NoSuchRevision(99)));
}

#[sqlx::test(migrations = "../migrations")]
async fn delete_checks_version_and_records_revision(pool: SqlitePool) {
    let store = Store::from_pool(pool);
    store.apply(&[vs("a", 80)], "t", WriteMode::Upsert).await.unwrap();
    let err = store.delete(Kind::VirtualService, "default", "a", "t", Some("7")).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }));
    let c = store.delete(Kind::VirtualService, "default", "a", "t", Some("1")).await.unwrap();
    assert_eq!(c.outcome, Outcome::Deleted);
    let err = store.delete(Kind::VirtualService, "default", "a", "t", None).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }));
    let h = store
        .history(&HistoryFilter { kind: Some(Kind::VirtualService), with_objects: true, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(h.last().unwrap().op, "delete");
    assert!(h.last().unwrap().after.is_none());
}

#[sqlx::test(migrations = "../migrations")]
async fn stored_objects_parse_back_to_resources(pool: SqlitePool) {
    let store = Store::from_pool(pool);
    let original = vs("a", 80);
    store.apply(std::slice::from_ref(&original), "t", WriteMode::Upsert).await.unwrap();
    let all = store.all_resources().await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].body, original.body);
    assert_eq!(all[0].metadata.resource_version.as_deref(), Some("1"));
}

#[sqlx::test(migrations = "../migrations")]
async fn passwords_and_tokens(pool: SqlitePool) {
    let store = Store::from_pool(pool);
    store.create_user("admin", "s3cret").await.unwrap();
    assert!(store.verify_password("admin", "s3cret").await.unwrap());
    assert!(!store.verify_password("admin", "wrong").await.unwrap());
    assert!(!store.verify_password("nobody", "s3cret").await.unwrap());
    let stored: String = sqlx::query_scalar("SELECT password_hash FROM users").fetch_one(store.pool()).await.unwrap();
    assert!(stored.starts_with("$argon2id$"), "{stored}");

    let token = new_token();
    store.add_token(&token, "admin", "admin", None).await.unwrap();
    assert_eq!(store.find_token(&token).await.unwrap().unwrap().subject, "admin");
    assert!(store.find_token("mg_wrong").await.unwrap().is_none());
    let hashes: Vec<String> = sqlx::query_scalar("SELECT hash FROM tokens").fetch_all(store.pool()).await.unwrap();
    assert!(!hashes.contains(&token), "tokens are stored hashed");
    store.add_token("mg_old", "admin", "session", Some("2000-01-01T00:00:00.000Z")).await.unwrap();
    assert!(store.find_token("mg_old").await.unwrap().is_none(), "expired tokens are refused");
}
