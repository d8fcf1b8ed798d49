//! Repository tests: [`SqlStore`] behaves the same on SQLite and
//! PostgreSQL (constraints, transactions, idempotent ingest, sums, and the
//! migration of users' free-text plans to plan records).

use crate::harness::TestDb;
use molt_config::UsageEvent;
use molt_controlplane::domain::{new_id, AuditEntry, LimitOverrides, Plan, User, UserStatus};
use molt_controlplane::service::prices::price_event;
use molt_controlplane::store::{Range, StoreError, UsageFilter, UserLimits};

crate::on_both_databases!(
    users_round_trip_and_emails_are_unique,
    failed_writes_leave_no_audit_entry,
    usage_ingest_is_idempotent_and_summed,
    config_version_is_monotonic_and_persisted,
    audit_retention_deletes_only_old_entries,
    plans_are_unique_and_users_must_name_one,
    migration_turns_free_text_plans_into_plans,
    migration_turns_float_prices_into_exact_versions,
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
        plan: None,
        stripe_customer_id: None,
        limits: LimitOverrides {
            requests_per_minute: Some(60),
            ..Default::default()
        },
        clerk_id: None,
        clerk_updated_at: None,
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
    let first = s.insert_usage(&batch, 0, price_event).await.unwrap();
    assert_eq!((first.accepted, first.duplicates), (3, 0));
    let again = s.insert_usage(&batch, 0, price_event).await.unwrap();
    assert_eq!((again.accepted, again.duplicates), (0, 3));
    let mixed = s
        .insert_usage(&[ev("e1", day1, 10), ev("e4", day2, 7)], 0, price_event)
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

fn plan(name: &str) -> Plan {
    Plan {
        id: new_id("pln"),
        name: name.into(),
        description: "for tests".into(),
        limits: LimitOverrides {
            requests_per_minute: Some(2),
            ..Default::default()
        },
        markup_bp: 0,
        created_at: 1,
        updated_at: 1,
    }
}

async fn plans_are_unique_and_users_must_name_one(db: TestDb) {
    let s = &db.store;
    let pro = plan("pro");
    s.insert_plan(&pro, &audit("plan.create", 1)).await.unwrap();
    assert_eq!(s.get_plan("pro").await.unwrap(), Some(pro.clone()));
    assert_eq!(s.get_plan(&pro.id).await.unwrap(), Some(pro.clone()));
    assert!(matches!(
        s.insert_plan(&plan("pro"), &audit("plan.create", 1)).await,
        Err(StoreError::Duplicate)
    ));

    // The foreign key: a user names an existing plan or none.
    let mut a = user("a@x.io");
    a.plan = Some("nope".into());
    let audits = s.list_audit(&all()).await.unwrap().len();
    assert!(matches!(
        s.insert_user(&a, &audit("user.create", 1)).await,
        Err(StoreError::Reference)
    ));
    assert_eq!(s.get_user(&a.id).await.unwrap(), None);
    assert_eq!(s.list_audit(&all()).await.unwrap().len(), audits);
    a.plan = Some("pro".into());
    s.insert_user(&a, &audit("user.create", 1)).await.unwrap();
    assert_eq!(s.get_user(&a.id).await.unwrap(), Some(a.clone()));
    assert_eq!(s.count_plan_users("pro").await.unwrap(), 1);

    // In use: the delete is refused and leaves no audit entry.
    assert!(matches!(
        s.delete_plan(&pro.id, &audit("plan.delete", 1)).await,
        Err(StoreError::Reference)
    ));
    assert_eq!(s.list_audit(&all()).await.unwrap().len(), audits + 1);

    // The snapshot source carries the plan and who is on it.
    let src = s.snapshot_source(0).await.unwrap();
    assert_eq!(src.plans, vec![pro.clone()]);
    assert_eq!(
        src.user_limits,
        vec![UserLimits {
            user_id: a.id.clone(),
            plan: Some("pro".into()),
            overrides: a.limits,
        }]
    );

    let mut changed = pro.clone();
    changed.limits = LimitOverrides::default();
    changed.description = "changed".into();
    s.update_plan(&changed, &audit("plan.update", 1))
        .await
        .unwrap();
    assert_eq!(s.get_plan("pro").await.unwrap(), Some(changed));

    a.plan = None;
    s.update_user(&a, &audit("user.update", 1)).await.unwrap();
    s.delete_plan(&pro.id, &audit("plan.delete", 1))
        .await
        .unwrap();
    assert_eq!(s.get_plan("pro").await.unwrap(), None);
    assert!(s.list_plans(&all()).await.unwrap().is_empty());
}

/// A database at migration 0004 with users on free-text plans, then
/// migrated: each value in use becomes a plan with no limits, users keep
/// their label, empty strings become no plan.
/// Another, empty database of the same kind as `db`, migrated only by the
/// migrations before `next` (from a copy of them): its URL, PostgreSQL
/// name and a pool on it.
async fn database_before(db: &TestDb, next: &str) -> (String, Option<String>, sqlx::AnyPool) {
    let (url, pg_name) = crate::harness::empty_database(db.pg_name.is_some()).await;
    let dir = std::env::temp_dir().join(format!("molt-mig-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.as_str() < next {
            std::fs::copy(&path, dir.join(&name)).unwrap();
        }
    }
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    let old = sqlx::migrate::Migrator::new(dir.as_path()).await.unwrap();
    old.run(&pool).await.unwrap();
    std::fs::remove_dir_all(&dir).ok();
    (url, pg_name, pool)
}

/// Close `pool` and open the store on `url`, which runs the remaining
/// migrations.
async fn migrate_rest(pool: sqlx::AnyPool, url: &str) -> molt_controlplane::store::SqlStore {
    pool.close().await;
    molt_controlplane::store::SqlStore::connect(url, 2)
        .await
        .unwrap()
}

async fn migration_turns_free_text_plans_into_plans(db: TestDb) {
    let (url, pg_name, pool) = database_before(&db, "0005").await;
    for (id, email, plan) in [
        ("usr_1", "a@x.io", Some("pro")),
        ("usr_2", "b@x.io", Some("pro")),
        ("usr_3", "c@x.io", Some("Legacy Gold")),
        ("usr_4", "d@x.io", Some("")),
        ("usr_5", "e@x.io", None),
    ] {
        sqlx::query(
            "INSERT INTO users (id, email, status, plan, stripe_customer_id, limits, \
             created_at, updated_at) VALUES ($1, $2, 'active', $3, NULL, '{}', 1, 1)",
        )
        .bind(id)
        .bind(email)
        .bind(plan)
        .execute(&pool)
        .await
        .unwrap();
    }
    let store = migrate_rest(pool, &url).await;
    let plans: Vec<String> = store
        .list_plans(&all())
        .await
        .unwrap()
        .into_iter()
        .map(|p| {
            assert!(p.limits.is_empty(), "{p:?}");
            p.name
        })
        .collect();
    assert_eq!(plans, vec!["Legacy Gold", "pro"]);
    let users: Vec<Option<String>> = store
        .list_users(&all())
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.plan)
        .collect();
    assert_eq!(
        users,
        vec![
            Some("pro".into()),
            Some("pro".into()),
            Some("Legacy Gold".into()),
            None,
            None
        ]
    );
    assert_eq!(store.count_plan_users("pro").await.unwrap(), 2);
    store.close().await;
    crate::harness::drop_pg_database(pg_name).await;
}

/// A database at migration 0005 with float prices and usage, then
/// migrated: exact prices become each model's first version (in force from
/// the beginning) and price the stored usage; free (0/0) and inexact ones
/// leave the model unpriced, the inexact one named in the audit log.
async fn migration_turns_float_prices_into_exact_versions(db: TestDb) {
    let (url, pg_name, pool) = database_before(&db, "0006").await;
    sqlx::query(
        "INSERT INTO providers (id, name, kind, base_url, keys_sealed, key_count, created_at, \
         updated_at) VALUES ('prv_1', 'p1', 'openai', 'http://x', '', 0, 1, 1)",
    )
    .execute(&pool)
    .await
    .unwrap();
    for (id, name, input, output) in [
        ("mdl_1", "exact", 2.5, 10.0),
        ("mdl_2", "tenths", 0.1, 0.3),
        ("mdl_3", "free", 0.0, 0.0),
        ("mdl_4", "inexact", 0.0000001, 1.0),
    ] {
        sqlx::query(
            "INSERT INTO models (id, name, provider, upstream_name, aliases, fallbacks, \
             input_price_per_mtok, output_price_per_mtok, created_at, updated_at) \
             VALUES ($1, $2, 'p1', NULL, '[]', '[]', $3, $4, 1, 1)",
        )
        .bind(id)
        .bind(name)
        .bind(input)
        .bind(output)
        .execute(&pool)
        .await
        .unwrap();
    }
    for (id, model) in [("e1", "exact"), ("e2", "free")] {
        sqlx::query(
            "INSERT INTO usage_events (event_id, request_id, timestamp_ms, day, key_id, user_id, \
             model, provider, route, status, input_tokens, output_tokens, estimated, stream, \
             attempts, duration_ms, upstream_ttfb_ms, outcome, received_at) VALUES ($1, 'r', \
             1700000000000, '2023-11-14', 'k', 'u1', $2, 'p1', 'chat.completions', 200, \
             1000000, 500000, 0, 0, 1, 1, NULL, 'ok', 1)",
        )
        .bind(id)
        .bind(model)
        .execute(&pool)
        .await
        .unwrap();
    }
    let store = migrate_rest(pool, &url).await;
    let prices: Vec<(String, String, String)> = store
        .prices_in_force(0)
        .await
        .unwrap()
        .into_iter()
        .map(|v| {
            let w = v.price.to_wire();
            (v.model, w.input, w.output)
        })
        .collect();
    assert_eq!(
        prices,
        vec![
            ("exact".into(), "2.50".into(), "10.00".into()),
            ("tenths".into(), "0.10".into(), "0.30".into()),
        ]
    );
    // 1M input at $2.50 + 0.5M output at $10 = $7.50; the free model's
    // event is unpriced.
    let sums = store.usage_by_day(&UsageFilter::default()).await.unwrap();
    let costs: Vec<_> = sums
        .iter()
        .map(|s| (s.model.as_str(), s.cost_pico, s.unpriced_events))
        .collect();
    assert_eq!(costs, vec![("exact", 7_500_000_000_000, 0), ("free", 0, 1)]);
    let audit = store.list_audit(&all()).await.unwrap();
    let flagged: Vec<_> = audit
        .iter()
        .filter(|a| a.action == "model.price_not_migrated")
        .map(|a| a.target.as_str())
        .collect();
    assert_eq!(flagged.len(), 2, "{audit:?}");
    assert!(flagged.contains(&"mdl_3") && flagged.contains(&"mdl_4"));
    store.close().await;
    crate::harness::drop_pg_database(pg_name).await;
}
