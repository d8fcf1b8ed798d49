//! The Fly client against the fake Fly, without a database: Fly's status
//! codes come back as the errors the provisioner acts on (422 name taken,
//! 409 lease held, 408 wait timeout, 429 rate limits backed off through),
//! and Fly's error text is surfaced. Also over HTTPS: the fake served with
//! a self-signed certificate, trusted through `ca_file` or refused. And the
//! local fleet, its bots served by the mock bot gateway.

use molt_controlplane::fleet::fly::{FlyFleet, FlySettings};
use molt_controlplane::fleet::local::{BotGateway, BotLauncher, LocalFleet};
use molt_controlplane::fleet::{Fleet, FleetError, MachineSpec, VolumeSpec};
use molt_fakes::fake_fly::{FakeFly, FakeFlyOptions, Fault};
use molt_fakes::mock_bot::{MockBot, MockBotOptions};
use molt_fakes::tls::loopback_certificate;
use std::path::PathBuf;
use std::sync::Arc;
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

/// A 1 GB volume named `name`, in the default region.
fn volume(name: &str) -> VolumeSpec {
    VolumeSpec {
        name: name.into(),
        region: None,
        size_gb: 1,
    }
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
    let vol = fly.create_volume(&volume("bot_x")).await.unwrap();
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
    let e = fly.create_volume(&volume("v")).await.unwrap_err();
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
    let vol = fly.create_volume(&volume("bot_x")).await.unwrap();
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

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("molt-fly-tls-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn tls_settings(base: &str, ca_file: Option<PathBuf>) -> FlySettings {
    let mut s = FlySettings::new("app1", "img:1", molt_config::Secret::new("fake-fly-token"));
    s.base_url = base.to_owned();
    s.ca_file = ca_file;
    s.backoff = Duration::from_millis(10);
    s
}

#[tokio::test]
async fn https_with_the_ca_file_creates_and_reads_back() {
    let dir = temp_dir();
    let (ca, server) = loopback_certificate(&dir, "ca.pem").unwrap();
    let fake = FakeFly::new(FakeFlyOptions {
        boot_delay: Duration::from_millis(10),
        rate_limits: false,
        spawn_bots: false,
        ..FakeFlyOptions::default()
    });
    let base = fake.spawn_tls(server).await.unwrap();
    assert!(base.starts_with("https://127.0.0.1:"), "{base}");
    let fly = FlyFleet::new(tls_settings(&base, Some(ca))).unwrap();

    let vol = fly.create_volume(&volume("bot_x")).await.unwrap();
    let m = fly.create_machine(&spec(&vol.id)).await.unwrap();
    assert_eq!(fly.find_volumes("bot_x").await.unwrap(), vec![vol.clone()]);
    assert_eq!(fly.find_machine("bot_1").await.unwrap().unwrap().id, m.id);
    fly.wait_started(&m.id, Duration::from_secs(5))
        .await
        .unwrap();
    let got = fly.get_machine(&m.id).await.unwrap().unwrap();
    assert_eq!(
        (got.id.as_str(), got.state.as_str()),
        (m.id.as_str(), "started")
    );
    // Leased mutations work over TLS too.
    fly.stop_machine(&m.id).await.unwrap();

    // What the fake holds is what the client made, once each.
    let live = fake.live_machines();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].id, m.id);
    let vols = fake.volumes();
    assert_eq!(vols.len(), 1);
    assert_eq!(vols[0].id, vol.id);
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn https_with_an_untrusted_certificate_is_a_tls_error() {
    let dir = temp_dir();
    let (_, server) = loopback_certificate(&dir, "server.pem").unwrap();
    let (other_ca, _) = loopback_certificate(&dir, "other.pem").unwrap();
    let fake = FakeFly::new(FakeFlyOptions {
        rate_limits: false,
        spawn_bots: false,
        ..FakeFlyOptions::default()
    });
    let base = fake.spawn_tls(server).await.unwrap();
    // Another CA, and the webpki roots alone: both refuse the certificate,
    // at once (no retries) and before any request reaches the fake.
    for ca_file in [Some(other_ca), None] {
        let fly = FlyFleet::new(tls_settings(&base, ca_file.clone())).unwrap();
        let e = fly.find_volumes("bot_x").await.unwrap_err();
        match &e {
            FleetError::Tls(message) => {
                assert!(message.contains("certificate"), "{ca_file:?}: {e}");
                assert!(message.contains(&base), "{e}");
            }
            other => panic!("{ca_file:?}: expected a TLS error, got {other:?}"),
        }
        assert!(!e.is_transient());
        assert_eq!(e.reason(), "tls");
    }
    assert!(fake.calls().is_empty(), "{:?}", fake.calls());

    // A CA file that is not PEM, and a scheme that is neither: refused at
    // construction with the reason.
    let junk = dir.join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let e = FlyFleet::new(tls_settings(&base, Some(junk))).unwrap_err();
    assert!(
        matches!(&e, FleetError::Config(m) if m.contains("junk.pem")),
        "{e:?}"
    );
    let e = FlyFleet::new(tls_settings("ftp://127.0.0.1:1", None)).unwrap_err();
    assert!(matches!(e, FleetError::Config(_)), "{e:?}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// The local fleet's launcher in these tests: the mock bot gateway, as the
/// `molt` binary plugs it in.
struct MockBots;

impl BotLauncher for MockBots {
    fn launch(&self, listener: tokio::net::TcpListener, gateway_token: &str) -> BotGateway {
        let bot = MockBot::new(MockBotOptions {
            token: gateway_token.to_owned(),
            ..MockBotOptions::default()
        });
        Box::pin(bot.serve(listener))
    }
}

/// `GET {gateway_url}status`: the status, or `None` if nothing answers.
async fn bot_status(url: &str) -> Option<u16> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let req = hyper::Request::get(format!("{url}status"))
        .body(http_body_util::Full::default())
        .unwrap();
    client.request(req).await.ok().map(|r| r.status().as_u16())
}

#[tokio::test]
async fn local_fleet_runs_bots_through_its_launcher_and_keeps_their_port() {
    let fleet = LocalFleet::new(Arc::new(MockBots));
    let vol = fleet.create_volume(&volume("bot_x")).await.unwrap();
    assert_eq!(
        fleet.find_volumes("bot_x").await.unwrap(),
        vec![vol.clone()]
    );
    let m = fleet.create_machine(&spec(&vol.id)).await.unwrap();
    assert_eq!(m.state, "started");
    fleet
        .wait_started(&m.id, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(fleet.find_machine("bot_1").await.unwrap(), Some(m.clone()));
    let e = fleet.create_machine(&spec(&vol.id)).await.unwrap_err();
    assert!(matches!(e, FleetError::NameTaken(_)), "{e:?}");

    // The launcher's gateway answers on the machine's loopback URL.
    let url = fleet.gateway_url(&m);
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert_eq!(bot_status(&url).await, Some(200));

    // Stopped, nothing answers; started again, on the same URL.
    fleet.stop_machine(&m.id).await.unwrap();
    assert_eq!(
        fleet.get_machine(&m.id).await.unwrap().unwrap().state,
        "stopped"
    );
    assert_eq!(bot_status(&url).await, None);
    fleet.start_machine(&m.id).await.unwrap();
    assert_eq!(fleet.gateway_url(&m), url);
    assert_eq!(bot_status(&url).await, Some(200));

    fleet.delete_machine(&m.id).await.unwrap();
    fleet.delete_volume(&vol.id).await.unwrap();
    assert_eq!(bot_status(&url).await, None);
    assert_eq!(fleet.find_machine("bot_1").await.unwrap(), None);
    assert!(fleet.find_volumes("bot_x").await.unwrap().is_empty());
}
