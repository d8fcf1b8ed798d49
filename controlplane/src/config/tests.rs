//! The config file's validation: every field's errors with their paths,
//! defaults, secrets from the environment never echoed.

use super::*;
use crate::provision::ProvisionSettings;
use std::collections::HashMap;

const FILE: &str = r#"
    listen = "127.0.0.1:9700"
    database_url = "sqlite://cp.db?mode=rwc"
    [secrets]
    encryption_key_env = "KEY"
    dataplane_token_env = "DP"
    bootstrap_admin_token_env = "ADMIN"
    [jwt]
    issuer = "molt"
    secret_env = "JWT"
    [tuning]
    poll_hold = "2s"
"#;

fn env() -> HashMap<&'static str, &'static str> {
    HashMap::from([
        (
            "KEY",
            "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
        ),
        ("DP", "dataplane-token-0123"),
        ("ADMIN", "admin-token-0123456"),
        ("JWT", "0123456789abcdef0123456789abcdef"),
    ])
}

#[test]
fn resolves_from_env() {
    let raw: RawControlplaneConfig = toml::from_str(FILE).unwrap();
    let s = Settings::resolve(raw, &env()).unwrap();
    assert_eq!(s.api.poll_hold, Duration::from_secs(2));
    assert_eq!(
        s.service.dataplane_token_sha256,
        sha256_hex("dataplane-token-0123")
    );
}

#[test]
fn reports_every_missing_secret() {
    let raw: RawControlplaneConfig = toml::from_str(FILE).unwrap();
    let err = Settings::resolve(raw, &HashMap::<&str, &str>::new()).unwrap_err();
    assert_eq!(err.0.len(), 4, "{err}");
}

#[test]
fn billing_meters_are_cost_with_a_unit_or_tokens() {
    let resolve = |extra: &str| {
        let text = format!(
            "{FILE}\n[billing]\nwebhook_secret_env = \"WHSEC\"\nstripe_api_key_env = \"SK\"\n{extra}\n"
        );
        let raw: RawControlplaneConfig = toml::from_str(&text).unwrap();
        let mut vars = env();
        vars.insert("WHSEC", "whsec_x");
        vars.insert("SK", "sk_test_x");
        Settings::resolve(raw, &vars).map(|s| s.billing.unwrap().settings.flush)
    };
    let f = resolve("meter = \"cost\"\nmeter_unit = \"0.01\"").unwrap();
    assert_eq!(
        f.meter,
        Meter::Cost {
            unit: Picodollars(10_000_000_000)
        }
    );
    let f = resolve("meter = \"tokens\"").unwrap();
    assert_eq!(
        (f.meter, f.event_name.as_str()),
        (Meter::Tokens, "ai_tokens")
    );
    for (bad, message) in [
        ("meter_unit = \"0\"", "billing.meter_unit: must be above 0"),
        (
            "meter_unit = \"0.1.2\"",
            "billing.meter_unit: must be a decimal",
        ),
        (
            "meter = \"tokens\"\nmeter_unit = \"1\"",
            "billing.meter_unit: only for",
        ),
    ] {
        let err = resolve(bad).unwrap_err().to_string();
        assert!(err.contains(message), "{bad}: {err}");
    }
}

#[test]
fn previous_encryption_keys_join_the_keyring() {
    const NEW: &str = "new:ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";
    let text = FILE.replace(
        "encryption_key_env = \"KEY\"",
        "encryption_key_env = \"KEY\"\nprevious_encryption_keys_env = \"PREV\"",
    );
    let raw: RawControlplaneConfig = toml::from_str(&text).unwrap();
    // Unset (or empty): the single key, as before.
    let s = Settings::resolve(raw.clone(), &env()).unwrap();
    assert_eq!(s.service.cipher.previous_kids().count(), 0);
    let resolve = |key: &'static str, previous: &'static str| {
        let mut vars = env();
        vars.insert("KEY", key);
        vars.insert("PREV", previous);
        Settings::resolve(raw.clone(), &vars)
    };
    let old = env()["KEY"];
    let s = resolve(NEW, old).unwrap();
    let cipher = &s.service.cipher;
    assert_eq!(cipher.current_kid(), "new");
    assert_eq!(
        cipher.previous_kids().collect::<Vec<_>>(),
        [Cipher::from_text(old).unwrap().current_kid()]
    );
    let err = resolve(NEW, "old:0123").unwrap_err();
    assert_eq!(err.0.len(), 1, "{err}");
    assert!(
        err.0[0].starts_with("secrets: previous encryption keys: encryption key must be 32 bytes"),
        "{err}"
    );
    assert!(!err.to_string().contains("0123"), "{err}");
    let err = resolve(
        NEW,
        "new:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
    )
    .unwrap_err();
    assert_eq!(
        err.0,
        ["secrets: previous encryption keys: key id \"new\" is given to more than one key"]
    );
    let both = text.replace(
        "previous_encryption_keys_env",
        "previous_encryption_keys_file = \"/nonexistent\"\nprevious_encryption_keys_env",
    );
    let err = Settings::resolve(toml::from_str(&both).unwrap(), &env()).unwrap_err();
    assert_eq!(err.0.len(), 1, "{err}");
    assert!(err.0[0].contains("at most one"), "{err}");
}

#[test]
fn billing_section_resolves_with_defaults() {
    let text = format!(
        "{FILE}\n[billing]\nwebhook_secret_env = \"WHSEC\"\nstripe_api_key_env = \"SK\"\npast_due_grace = \"3d\"\n"
    );
    let raw: RawControlplaneConfig = toml::from_str(&text).unwrap();
    let mut vars = env();
    vars.insert("WHSEC", "whsec_x");
    vars.insert("SK", "sk_test_x");
    let b = Settings::resolve(raw.clone(), &vars)
        .unwrap()
        .billing
        .unwrap();
    assert_eq!(b.settings.flush.event_name, "ai_cost");
    assert_eq!(
        b.settings.flush.meter,
        Meter::Cost {
            unit: Picodollars(10_000_000)
        }
    );
    assert_eq!(b.settings.flush_interval, Duration::from_secs(3600));
    assert_eq!(b.settings.past_due_grace, Duration::from_secs(3 * 86400));
    assert_eq!(b.settings.webhook_secret.expose(), "whsec_x");
    let err = Settings::resolve(raw, &env()).unwrap_err();
    assert_eq!(err.0.len(), 2, "{err}");
}

#[test]
fn fly_fleet_resolves() {
    let text = format!(
        "{FILE}\n[fleet]\nkind = \"fly\"\napi_url = \"http://127.0.0.1:4280\"\napp = \"bots\"\ntoken_env = \"FLY\"\nimage = \"img:1\"\nregion = \"iad\"\ngateway_url = \"http://{{private_ip}}:18789/\"\nproxy_url = \"http://127.0.0.1:8080/v1\"\nhealth_deadline = \"20s\"\nmax_attempts = 3\n"
    );
    let raw: RawControlplaneConfig = toml::from_str(&text).unwrap();
    let mut vars = env();
    vars.insert("FLY", "fly-token");
    let f = Settings::resolve(raw.clone(), &vars)
        .unwrap()
        .fleet
        .unwrap();
    let FleetKind::Fly(fly) = &f.kind else {
        panic!("not fly: {f:?}")
    };
    assert_eq!(fly.base_url, "http://127.0.0.1:4280");
    assert_eq!(fly.app, "bots");
    assert_eq!(fly.image, "img:1");
    assert_eq!(fly.region.as_deref(), Some("iad"));
    assert_eq!(fly.token.expose(), "fly-token");
    assert_eq!(fly.gateway_url_template, "http://{private_ip}:18789/");
    assert_eq!(f.provision.proxy_url, "http://127.0.0.1:8080/v1");
    assert_eq!(f.provision.health_deadline, Duration::from_secs(20));
    assert_eq!(f.provision.max_attempts, 3);
    assert_eq!(
        f.provision.poll_interval,
        ProvisionSettings::default().poll_interval
    );
    let err = Settings::resolve(raw, &env()).unwrap_err();
    assert_eq!(
        err.0,
        ["fleet.token_env: environment variable FLY is not set"]
    );
}

#[test]
fn fly_fleet_errors_name_their_fields() {
    let text = format!(
        "{FILE}\n[fleet]\nkind = \"fly\"\napi_url = \"ftp://api.machines.dev\"\nconcurrency = 0\n"
    );
    let raw: RawControlplaneConfig = toml::from_str(&text).unwrap();
    let err = Settings::resolve(raw, &env()).unwrap_err();
    for field in [
        "fleet.proxy_url:",
        "fleet.app:",
        "fleet.image:",
        "fleet.token_env:",
        "fleet.api_url:",
        "fleet.concurrency:",
    ] {
        assert!(err.0.iter().any(|e| e.starts_with(field)), "{field}: {err}");
    }
    assert_eq!(err.0.len(), 6, "{err}");
}

#[test]
fn fly_fleet_over_https_with_a_ca_file() {
    let dir = std::env::temp_dir().join(format!("molt-cfg-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, "not checked here; FlyFleet::new reads it").unwrap();
    let fleet = |url: &str, ca_file: &Path| {
        format!(
            "{FILE}\n[fleet]\nkind = \"fly\"\napi_url = \"{url}\"\nca_file = \"{}\"\napp = \"bots\"\ntoken_env = \"FLY\"\nimage = \"img:1\"\nproxy_url = \"https://gw.example/v1\"\n",
            ca_file.display()
        )
    };
    let mut vars = env();
    vars.insert("FLY", "fly-token");
    let raw: RawControlplaneConfig =
        toml::from_str(&fleet("https://api.machines.dev", &ca)).unwrap();
    let f = Settings::resolve(raw, &vars).unwrap().fleet.unwrap();
    let FleetKind::Fly(fly) = &f.kind else {
        panic!("not fly: {f:?}")
    };
    assert_eq!(fly.base_url, "https://api.machines.dev");
    assert_eq!(fly.ca_file.as_deref(), Some(ca.as_path()));

    let raw: RawControlplaneConfig =
        toml::from_str(&fleet("http://_api.internal:4280", &ca)).unwrap();
    let err = Settings::resolve(raw, &vars).unwrap_err();
    assert_eq!(err.0, ["fleet.ca_file: only with an https:// api_url"]);
    let missing = dir.join("missing.pem");
    let raw: RawControlplaneConfig =
        toml::from_str(&fleet("https://api.machines.dev", &missing)).unwrap();
    let err = Settings::resolve(raw, &vars).unwrap_err();
    assert_eq!(
        err.0,
        [format!(
            "fleet.ca_file: no such file: {}",
            missing.display()
        )]
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn local_fleet_resolves_with_defaults() {
    let text = format!("{FILE}\n[fleet]\nkind = \"local\"\n");
    let raw: RawControlplaneConfig = toml::from_str(&text).unwrap();
    let f = Settings::resolve(raw, &env()).unwrap().fleet.unwrap();
    assert!(matches!(f.kind, FleetKind::Local));
    assert_eq!(
        f.provision.health_deadline,
        ProvisionSettings::default().health_deadline
    );
    let text = format!("{FILE}\n[fleet]\nkind = \"local\"\napp = \"x\"\n");
    let raw: RawControlplaneConfig = toml::from_str(&text).unwrap();
    let err = Settings::resolve(raw, &env()).unwrap_err();
    assert_eq!(err.0, ["fleet.app: only with kind = \"fly\""]);
    for bad in ["kind = \"k8s\"", "kind = \"local\"\nimage_url = \"x\""] {
        let text = format!("{FILE}\n[fleet]\n{bad}\n");
        assert!(
            toml::from_str::<RawControlplaneConfig>(&text).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn identity_section_resolves_and_names_its_errors() {
    let whsec = "whsec_MDEyMzQ1Njc4OWFiY2RlZg==";
    let text = format!(
        "{FILE}\n[identity]\nwebhook_secret_env = \"CLERK\"\njwks_url = \"https://clerk.example.com/.well-known/jwks.json\"\nissuer = \"https://clerk.example.com\"\nauthorized_parties = [\"https://app.example.com\"]\n"
    );
    let raw: RawControlplaneConfig = toml::from_str(&text).unwrap();
    let mut vars = env();
    vars.insert("CLERK", whsec);
    let s = Settings::resolve(raw.clone(), &vars).unwrap();
    let jwks = s.identity.unwrap().jwks.unwrap();
    assert_eq!(jwks.refresh, Duration::from_secs(300));
    let tokens = s.service.identity_tokens.unwrap();
    assert_eq!(tokens.issuer, "https://clerk.example.com");
    assert_eq!(tokens.authorized_parties, ["https://app.example.com"]);
    let err = Settings::resolve(raw, &env()).unwrap_err();
    assert_eq!(
        err.0,
        ["identity.webhook_secret_env: environment variable CLERK is not set"]
    );

    let text = format!(
        "{FILE}\n[identity]\nwebhook_secret_env = \"CLERK\"\njwks_url = \"ftp://x\"\njwks_refresh = \"1s\"\n"
    );
    let raw: RawControlplaneConfig = toml::from_str(&text).unwrap();
    let mut vars = env();
    vars.insert("CLERK", "whsec_not base64!");
    let err = Settings::resolve(raw, &vars).unwrap_err();
    for field in [
        "identity.webhook_secret_env:",
        "identity.jwks_refresh:",
        "identity.jwks_url:",
        "identity.issuer:",
    ] {
        assert!(err.0.iter().any(|e| e.starts_with(field)), "{field}: {err}");
    }
    let text = format!("{FILE}\n[identity]\nwebhook_secret_env = \"CLERK\"\nissuer = \"x\"\n");
    let raw: RawControlplaneConfig = toml::from_str(&text).unwrap();
    let mut vars = env();
    vars.insert("CLERK", whsec);
    let err = Settings::resolve(raw, &vars).unwrap_err();
    assert_eq!(err.0, ["identity.issuer: only with jwks_url"]);
}

#[test]
fn unknown_fields_are_errors() {
    let text = FILE.replace("listen =", "lisen = \"x\"\nlisten =");
    assert!(toml::from_str::<RawControlplaneConfig>(&text).is_err());
}
