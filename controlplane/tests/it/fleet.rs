//! The Fly client against the fake Fly, without a database: Fly's status
//! codes come back as the errors the provisioner acts on (422 name taken,
//! 409 lease held, 408 wait timeout, 429 rate limits backed off through),
//! and Fly's error text is surfaced.

use molt_controlplane::fleet::fly::{FlyFleet, FlySettings};
use molt_controlplane::fleet::{Fleet, FleetError, MachineSpec, VolumeSpec};
use molt_loadtest::fake_fly::{FakeFly, FakeFlyOptions, Fault};
use std::time::Duration;

async fn fleet(opts: FakeFlyOptions, image: &str) -> (FakeFly, FlyFleet, String) {
    let token = opts.token.clone();
    let fake = FakeFly::new(opts);
    let base = fake.spawn().await.unwrap();
    let mut s = FlySettings::new("app1", image, molt_config::Secret::new(token));
    s.base_url = base.clone();
    s.backoff = Duration::from_millis(200);
    (fake, FlyFleet::new(s).unwrap(), base)
}

fn spec(volume_id: &str) -> MachineSpec {
    MachineSpec {
        name: "bot_x".into(),
        bot_id: "bot_1".into(),
        user_id: "usr_1".into(),
        region: None,
        volume_id: volume_id.into(),
        gateway_token: molt_config::Secret::new("t".repeat(64)),
        clawdbot_config: serde_json::json!({}),
        proxy_url: "http://dp/v1".into(),
    }
}

#[tokio::test]
async fn fly_statuses_become_fleet_errors() {
    let (fake, fly, base) = fleet(
        FakeFlyOptions {
            boot_delay: Duration::from_secs(3),
            rate_limits: false,
            ..FakeFlyOptions::default()
        },
        "img:1",
    )
    .await;
    let vol = fly
        .create_volume(&VolumeSpec {
            name: "bot_x".into(),
            region: None,
            size_gb: 1,
        })
        .await
        .unwrap();
    assert_eq!(fly.find_volumes("bot_x").await.unwrap(), vec![vol.clone()]);
    let m = fly.create_machine(&spec(&vol.id)).await.unwrap();
    assert_eq!(fly.find_machine("bot_1").await.unwrap().unwrap().id, m.id);
    assert_eq!(fly.find_machine("bot_2").await.unwrap(), None);

    // 422 name_taken.
    let e = fly.create_machine(&spec(&vol.id)).await.unwrap_err();
    assert!(matches!(e, FleetError::NameTaken(_)), "{e:?}");
    // 408 from wait while it is still booting.
    let e = fly
        .wait_started(&m.id, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(e, FleetError::Timeout(_)), "{e:?}");

    // 409 while someone else holds the lease; Fly's message comes through.
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let req = hyper::Request::post(format!("{base}/v1/apps/app1/machines/{}/lease", m.id))
        .header("authorization", "Bearer fake-fly-token")
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            r#"{"ttl":30}"#,
        )))
        .unwrap();
    assert_eq!(client.request(req).await.unwrap().status(), 201);
    let e = fly.stop_machine(&m.id).await.unwrap_err();
    match &e {
        FleetError::Api {
            status: 409,
            message,
            ..
        } => assert!(message.contains("lease"), "{e}"),
        other => panic!("expected 409, got {other:?}"),
    }
    assert!(e.is_transient());

    // A 400 carries Fly's error text and is not retried.
    let mut bad = spec("vol_missing");
    bad.name = "other".into();
    bad.bot_id = "bot_2".into();
    let e = fly.create_machine(&bad).await.unwrap_err();
    assert!(e.to_string().contains("vol_missing"), "{e}");
    assert!(!e.is_transient());
    let _ = fake;
}

#[tokio::test]
async fn rate_limits_and_5xx_on_reads_are_retried() {
    let (fake, fly, _) = fleet(FakeFlyOptions::default(), "img:1").await;
    // Burst 3 at 1/s: the fourth and later lists get 429 and are retried.
    for _ in 0..6 {
        assert!(fly.find_machine("bot_1").await.unwrap().is_none());
    }
    assert!(fake.calls().iter().any(|(_, s)| *s == 429));
    fake.inject(Fault::fail(502, 2));
    assert!(fly.find_volumes("x").await.unwrap().is_empty());
    // A create is never repeated after a 5xx: the provisioner looks first.
    fake.inject(Fault::fail(500, 1));
    let e = fly
        .create_volume(&VolumeSpec {
            name: "v".into(),
            region: None,
            size_gb: 1,
        })
        .await
        .unwrap_err();
    assert!(matches!(e, FleetError::Api { status: 500, .. }), "{e:?}");
    assert!(fake.volumes().is_empty());
}

#[tokio::test]
async fn delete_with_force_and_volume_cleanup() {
    let (fake, fly, _) = fleet(
        FakeFlyOptions {
            boot_delay: Duration::from_millis(10),
            rate_limits: false,
            ..FakeFlyOptions::default()
        },
        "img:1",
    )
    .await;
    let vol = fly
        .create_volume(&VolumeSpec {
            name: "bot_x".into(),
            region: None,
            size_gb: 1,
        })
        .await
        .unwrap();
    let m = fly.create_machine(&spec(&vol.id)).await.unwrap();
    fly.wait_started(&m.id, Duration::from_secs(5))
        .await
        .unwrap();
    // Attached: Fly refuses.
    assert!(fly.delete_volume(&vol.id).await.is_err());
    fly.delete_machine(&m.id).await.unwrap();
    fly.delete_machine(&m.id).await.unwrap();
    assert_eq!(fly.get_machine(&m.id).await.unwrap(), None);
    fly.delete_volume(&vol.id).await.unwrap();
    fly.delete_volume(&vol.id).await.unwrap();
    assert!(fake.live_machines().is_empty() && fake.volumes().is_empty());
}
