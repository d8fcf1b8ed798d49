//! Repository tests: [`SqlStore`] behaves the same on SQLite and
//! PostgreSQL (constraints, transactions, idempotent ingest, sums).

use crate::harness::TestDb;
use molt_config::UsageEvent;
use molt_controlplane::domain::{new_id, AuditEntry, LimitOverrides, User, UserStatus};
use molt_controlplane::store::{Range, Store, StoreError, UsageFilter};

crate::on_both_databases!(
    users_round_trip_and_emails_are_unique,
    failed_writes_leave_no_audit_entry,
    usage_ingest_is_idempotent_and_summed,
    config_version_is_monotonic_and_persisted,
    audit_retention_deletes_only_old_entries,
);

fn audit(action: &str, at: i64) -> AuditEntry {
    AuditEntry {
        id: new_id("aud"),
        at,
        actor: "test".into(),
        action: action.into(),
        target: "t".into(),
        diff: serde_json::json!({}),
    }
}

fn user(email: &str) -> User {
    User {
        id: new_id("usr"),
        email: email.into(),
        status: UserStatus::Active,
        plan: Some("pro".into()),
        stripe_customer_id: None,
        limits: LimitOverrides {
            requests_per_minute: Some(60),
            ..Default::default()
        },
        created_at: 1,
        updated_at: 1,
    }
}

fn all() -> Range {
    Range {
        after: None,
        limit: 100,
    }
}

async fn users_round_trip_and_emails_are_unique(db: TestDb) {
    let s = &db.store;
    let a = user("a@x.io");
    s.insert_user(&a, &audit("user.create", 1)).await.unwrap();
    assert_eq!(s.get_user(&a.id).await.unwrap(), Some(a.clone()));
    let dup = user("a@x.io");
    assert!(matches!(
        s.insert_user(&dup, &audit("user.create", 1)).await,
        Err(StoreError::Duplicate)
    ));
    let b = user("b@x.io");
    s.insert_user(&b, &audit("user.create", 1)).await.unwrap();
    let page = s
        .list_users(&Range {
            after: Some(a.id.clone()),
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(page, vec![b.clone()]);
    assert!(matches!(
        s.update_user(&user("c@x.io"), &audit("user.update", 1))
            .await,
        Err(StoreError::NotFound)
    ));
}

async fn failed_writes_leave_no_audit_entry(db: TestDb) {
    let s = &db.store;
    let a = user("a@x.io");
    s.insert_user(&a, &audit("user.create", 1)).await.unwrap();
    let before = s.list_audit(&all()).await.unwrap().len();
    assert!(s
        .insert_user(&user("a@x.io"), &audit("user.create", 1))
        .await
        .is_err());
    assert!(s
        .revoke_api_key("key_missing", 5, &audit("key.revoke", 1))
        .await
        .is_err());
    assert_eq!(s.list_audit(&all()).await.unwrap().len(), before);
}

fn ev(id: &str, day_ms: u64, input: u64) -> UsageEvent {
    serde_json::from_value(crate::harness::event(id, "u1", "m1", input, 1))
        .map(|mut e: UsageEvent| {
            e.timestamp_ms = day_ms;
            e
        })
        .unwrap()
}

async fn usage_ingest_is_idempotent_and_summed(db: TestDb) {
    let s = &db.store;
    let day1 = 1_700_000_000_000;
    let day2 = day1 + 86_400_000;
    let batch = vec![ev("e1", day1, 10), ev("e2", day1, 20), ev("e3", day2, 5)];
    let first = s.insert_usage(&batch, 0).await.unwrap();
    assert_eq!((first.accepted, first.duplicates), (3, 0));
    let again = s.insert_usage(&batch, 0).await.unwrap();
    assert_eq!((again.accepted, again.duplicates), (0, 3));
    let mixed = s
        .insert_usage(&[ev("e1", day1, 10), ev("e4", day2, 7)], 0)
        .await
        .unwrap();
    assert_eq!((mixed.accepted, mixed.duplicates), (1, 1));
    let sums = s.usage_by_day(&UsageFilter::default()).await.unwrap();
    let flat: Vec<_> = sums
        .iter()
        .map(|r| (r.day.as_str(), r.requests, r.input_tokens, r.output_tokens))
        .collect();
    assert_eq!(
        flat,
        vec![("2023-11-14", 2, 30, 2), ("2023-11-15", 2, 12, 2)]
    );
    let only_day2 = s
        .usage_by_day(&UsageFilter {
            from_day: Some("2023-11-15".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(only_day2.len(), 1);
}

async fn config_version_is_monotonic_and_persisted(db: TestDb) {
    let a = db.store.bump_config_version().await.unwrap();
    let b = db.store.bump_config_version().await.unwrap();
    assert!(b > a);
    db.store.close().await;
    let reopened = molt_controlplane::store::SqlStore::connect(&db.url, 2)
        .await
        .unwrap();
    assert!(reopened.bump_config_version().await.unwrap() > b);
}

async fn audit_retention_deletes_only_old_entries(db: TestDb) {
    let s = &db.store;
    s.insert_audit(&audit("old", 1_000)).await.unwrap();
    s.insert_audit(&audit("new", 9_000)).await.unwrap();
    assert_eq!(s.delete_audit_before(5_000).await.unwrap(), 1);
    let left = s.list_audit(&all()).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].action, "new");
}
