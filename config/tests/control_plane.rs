//! `[control_plane]`: validation, defaults, and merging a snapshot into a
//! file's config without touching the local sections.

use molt_config::dataplane::{DataplaneConfig, DEFAULT_SPOOL_MAX_BYTES};
use molt_config::wire::RawSnapshot;
use std::collections::HashMap;
use std::time::Duration;

const BASE: &str = r#"
version = 1
[server]
listen = "127.0.0.1:8080"
"#;

fn with_section(section: &str) -> String {
    format!("{BASE}\n[control_plane]\n{section}")
}

fn env() -> HashMap<&'static str, &'static str> {
    HashMap::from([("DP_TOKEN", "dataplane-token-0123")])
}

#[test]
fn defaults_and_token_from_env() {
    let text = with_section(
        "url = \"http://127.0.0.1:9700\"\ntoken_env = \"DP_TOKEN\"\ncache_file = \"/tmp/c.json\"\nspool_dir = \"/tmp/spool\"\n",
    );
    let cfg = DataplaneConfig::from_toml(&text, &env()).unwrap();
    let cp = cfg.control_plane.unwrap();
    assert_eq!(cp.url.port, 9700);
    assert_eq!(cp.token.expose(), "dataplane-token-0123");
    assert_eq!(cp.spool_max_bytes, DEFAULT_SPOOL_MAX_BYTES);
    assert_eq!(cp.ship_interval, Duration::from_secs(1));
}

#[test]
fn every_problem_is_reported_with_its_path() {
    let text = with_section(
        "url = \"https://cp.example/x\"\ntoken_env = \"MISSING\"\ncache_file = \"\"\nspool_dir = \"\"\nspool_max_bytes = 10\nship_interval = \"0s\"\n",
    );
    let errs = DataplaneConfig::from_toml(&text, &env()).unwrap_err();
    let paths: Vec<_> = errs.iter().map(|e| e.path.clone()).collect();
    for want in [
        "control_plane.url",
        "control_plane.token_env",
        "control_plane.cache_file",
        "control_plane.spool_dir",
        "control_plane.spool_max_bytes",
        "control_plane.ship_interval",
    ] {
        assert!(paths.iter().any(|p| p == want), "{want} missing in {errs}");
    }
}

#[test]
fn a_snapshot_replaces_managed_sections_and_keeps_local_ones() {
    let text = with_section(
        "url = \"http://127.0.0.1:9700\"\ntoken_env = \"DP_TOKEN\"\ncache_file = \"c.json\"\nspool_dir = \"spool\"\n",
    ) + "\n[[keys]]\nid = \"local\"\nuser = \"u\"\nsha256 = \"5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8\"\n";
    let raw = DataplaneConfig::parse_toml(&text).unwrap();
    assert_eq!(raw.keys.len(), 1);
    let merged = raw.with_snapshot(RawSnapshot {
        version: 7,
        ..RawSnapshot::default()
    });
    assert!(merged.keys.is_empty());
    let cfg = DataplaneConfig::from_wire(merged, &env()).unwrap();
    assert!(cfg.control_plane.is_some());
    assert_eq!(cfg.server.listen.port(), 8080);
}

#[test]
fn https_with_a_ca_file_and_the_scheme_rules() {
    let dir = std::env::temp_dir().join(format!("molt-cp-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, "read by the data plane's client, not here").unwrap();
    let section = |url: &str, ca_file: Option<&str>| {
        let ca_line = ca_file.map_or(String::new(), |f| format!("ca_file = \"{f}\"\n"));
        with_section(&format!(
            "url = \"{url}\"\n{ca_line}token_env = \"DP_TOKEN\"\ncache_file = \"c.json\"\nspool_dir = \"spool\"\n"
        ))
    };
    let ca_path = ca.to_str().unwrap();

    let cfg =
        DataplaneConfig::from_toml(&section("https://cp.example:9443", Some(ca_path)), &env())
            .unwrap();
    let cp = cfg.control_plane.unwrap();
    assert!(cp.url.tls);
    assert_eq!(cp.url.authority(), "cp.example:9443");
    assert_eq!(cp.ca_file.as_deref(), Some(ca.as_path()));
    let cp = DataplaneConfig::from_toml(&section("https://cp.example", None), &env())
        .unwrap()
        .control_plane
        .unwrap();
    assert_eq!((cp.url.port, cp.ca_file), (443, None));

    let missing = dir.join("missing.pem");
    for (url, ca_file, path, message) in [
        (
            "http://cp.example",
            Some(ca_path),
            "control_plane.ca_file",
            "only with an https:// url",
        ),
        (
            "https://cp.example",
            Some(missing.to_str().unwrap()),
            "control_plane.ca_file",
            "no such file",
        ),
        (
            "https://cp.example",
            Some(""),
            "control_plane.ca_file",
            "must not be empty",
        ),
        (
            "ftp://cp.example",
            None,
            "control_plane.url",
            "scheme must be http or https",
        ),
    ] {
        let errs = DataplaneConfig::from_toml(&section(url, ca_file), &env()).unwrap_err();
        assert!(
            errs.iter()
                .any(|e| e.path == path && e.message.contains(message)),
            "{url} {ca_file:?}: want {path}: {message}, got {errs}"
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// Forward compatibility, both directions of one rule: a field this build
/// does not know is an error naming its path in a file a person wrote, and
/// is ignored (and named) in a snapshot from a newer control plane, whose
/// known fields still apply.
#[test]
fn unknown_fields_fail_a_file_and_pass_in_a_snapshot() {
    let text = format!(
        "{BASE}\n[[providers]]\nname = \"p\"\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:1/v1\"\nkeys = [\"sk-x\"]\nweight = 3\n"
    );
    let errs = DataplaneConfig::parse_toml(&text).unwrap_err();
    let paths: Vec<_> = errs.iter().map(|e| e.path.clone()).collect();
    assert_eq!(paths, ["providers[0].weight"], "{errs}");
    assert!(errs.to_string().contains("unknown field"), "{errs}");

    let body = serde_json::json!({
        "version": 9,
        "providers": [{"name": "p", "kind": "openai", "base_url": "http://127.0.0.1:1/v1",
            "keys": ["sk-x"], "weight": 3}],
        "models": [{"name": "m", "provider": "p"}],
        "routing": {"strategy": "latency"}
    });
    let parsed =
        molt_config::contract::parse_snapshot(body.to_string().as_bytes()).expect("accepted");
    assert_eq!(parsed.unknown_fields, ["providers[0].weight", "routing"]);
    let merged = DataplaneConfig::parse_toml(BASE)
        .unwrap()
        .with_snapshot(parsed.snapshot);
    let cfg = DataplaneConfig::from_wire(merged, &env()).unwrap();
    assert_eq!(cfg.providers[0].name, "p");
    assert_eq!(cfg.models[0].name, "m");
}

/// One `ProviderKind` for both planes: the spelling a config file and a
/// snapshot use (`parse`), the one the control plane's API and database use
/// (serde, `as_str`), and the names both accepted before they were merged.
#[test]
fn provider_kinds_have_one_spelling_everywhere() {
    use molt_config::ProviderKind;
    let accepted = [
        "openai",
        "azure_openai",
        "venice",
        "vllm",
        "openrouter",
        "anthropic",
    ];
    assert_eq!(ProviderKind::ALL.len(), accepted.len());
    for name in accepted {
        let kind = ProviderKind::parse(name).expect(name);
        assert_eq!(kind.as_str(), name);
        let json = serde_json::to_value(kind).unwrap();
        assert_eq!(json, serde_json::json!(name));
        assert_eq!(serde_json::from_value::<ProviderKind>(json).unwrap(), kind);
    }
    assert_eq!(ProviderKind::parse("open_ai"), None);
    assert!(serde_json::from_str::<ProviderKind>("\"OpenAI\"").is_err());
}
