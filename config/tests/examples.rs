//! Every example config in `config/examples/` parses and validates, and
//! validation reports bad configs with field paths.
#![allow(clippy::panic, reason = "test helpers fail the test by panicking")]

use molt_config::dataplane::DataplaneConfig;
use std::collections::HashMap;
use std::path::Path;

fn example_env() -> HashMap<&'static str, &'static str> {
    HashMap::from([
        ("OPENAI_API_KEY", "sk-test-1"),
        ("OPENAI_API_KEY_2", "sk-test-2"),
        ("AZURE_OPENAI_API_KEY", "az-test"),
        ("VENICE_API_KEY", "venice-test"),
        ("ANTHROPIC_API_KEY", "sk-ant-test"),
        ("MOLT_JWT_SECRET", "0123456789abcdef0123456789abcdef"),
        ("MOLT_DATAPLANE_TOKEN", "dp-token-test"),
    ])
}

#[test]
fn every_example_config_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        seen += 1;
        if let Err(e) = DataplaneConfig::load(&path, &example_env()) {
            panic!("{} does not validate:\n{e}", path.display());
        }
    }
    assert!(seen >= 2, "expected example configs in {}", dir.display());
}

#[test]
fn production_example_resolves_references() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/dataplane.toml");
    let cfg = DataplaneConfig::load(&path, &example_env()).unwrap();
    let mini = cfg.resolve_model("mini").unwrap();
    assert_eq!(mini.name, "gpt-4o-mini");
    assert_eq!(mini.fallbacks, ["gpt-4o-mini-azure"]);
    assert_eq!(cfg.providers[mini.provider].keys.len(), 2);
    let azure = cfg.resolve_model("gpt-4o-mini-azure").unwrap();
    assert_eq!(azure.upstream_name, "gpt-4o-mini");
    assert_eq!(
        cfg.providers[azure.provider].base_url.path_prefix,
        "/openai/v1"
    );
    assert_eq!(
        cfg.keys[0].models.as_deref(),
        Some(&["gpt-4o-mini".to_owned(), "claude-sonnet-4-5".to_owned()][..])
    );
    // Prices per class, and the dollar budget of the key's user.
    let sonnet = cfg.resolve_model("sonnet").unwrap().price.unwrap();
    assert_eq!(
        sonnet.cache_write_1h_input.unwrap().per_million_text(),
        "6.00"
    );
    assert_eq!(
        cfg.limits.user_limits("user-7f3a").monthly_budget_usd,
        Some(molt_config::Picodollars::parse_usd("25").unwrap())
    );
}

fn errors_of(toml: &str) -> Vec<String> {
    match DataplaneConfig::from_toml(toml, &example_env()) {
        Ok(_) => panic!("expected errors"),
        Err(e) => e.iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn bad_config_reports_every_error_with_its_path() {
    let errs = errors_of(
        r#"
version = 2
[server]
listen = "nope"
threads = 0
[[keys]]
id = "a"
user = "u"
sha256 = "xyz"
models = ["ghost"]
[[providers]]
name = "p"
kind = "telepathy"
base_url = "http://x"
keys = ["k"]
[[providers]]
name = "q"
kind = "openai"
base_url = "ftp://x"
[[models]]
name = "m"
provider = "nobody"
fallbacks = ["m"]
"#,
    );
    let has = |prefix: &str| errs.iter().any(|e| e.starts_with(prefix));
    for expected in [
        "version:",
        "server.listen:",
        "server.threads:",
        "keys[0].sha256:",
        "keys[0].models[0]:",
        "providers[0].kind:",
        "providers[1].base_url:",
        "models[0].provider:",
    ] {
        assert!(has(expected), "missing {expected} in {errs:#?}");
    }
}

#[test]
fn unknown_fields_are_rejected() {
    let errs = errors_of("version = 1\n[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n");
    assert!(errs[0].contains("unknown field"), "{errs:?}");
}

#[test]
fn fallback_across_formats_is_rejected() {
    let errs = errors_of(
        r#"
version = 1
[server]
listen = "127.0.0.1:1"
[[providers]]
name = "o"
kind = "openai"
base_url = "http://127.0.0.1:1/v1"
keys = ["k"]
[[providers]]
name = "a"
kind = "anthropic"
base_url = "http://127.0.0.1:1/v1"
keys = ["k"]
[[models]]
name = "gpt"
provider = "o"
fallbacks = ["claude"]
[[models]]
name = "claude"
provider = "a"
"#,
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("models[0].fallbacks[0]:")),
        "{errs:?}"
    );
}

#[test]
fn duplicate_names_and_missing_env_are_reported() {
    let errs = errors_of(
        r#"
version = 1
[server]
listen = "127.0.0.1:1"
[[providers]]
name = "o"
kind = "openai"
base_url = "http://127.0.0.1:1/v1"
keys_env = ["NOT_SET_ANYWHERE"]
[[models]]
name = "a"
provider = "o"
aliases = ["b"]
[[models]]
name = "b"
provider = "o"
"#,
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("providers[0].keys_env[0]:")),
        "{errs:?}"
    );
    assert!(
        errs.iter().any(|e| e.starts_with("models[1].name:")),
        "{errs:?}"
    );
}

#[test]
fn toml_type_errors_name_the_field() {
    let errs = errors_of(
        "version = 1\n[server]\nlisten = \"127.0.0.1:1\"\ngrace_period = \"5 parsecs\"\n",
    );
    assert!(errs[0].starts_with("server.grace_period:"), "{errs:?}");
    let errs = errors_of(
        "version = 1\n[server]\nlisten = \"127.0.0.1:1\"\n[[models]]\nname = \"a\"\nprovider = \"p\"\n[[models]]\nname = 5\n",
    );
    assert!(errs[0].starts_with("models[1].name:"), "{errs:?}");
}

#[test]
fn a_snapshot_replaces_the_managed_sections() {
    use molt_config::wire::{RawDataplaneConfig, RawSnapshot};
    let local: RawDataplaneConfig =
        toml::from_str(include_str!("../examples/minimal.toml")).unwrap();
    let snap: RawSnapshot = serde_json::from_value(serde_json::json!({
        "version": 7,
        "keys": [{"id": "k", "user": "u", "sha256": "ab".repeat(32)}],
        "providers": [{"name": "p", "kind": "openai", "base_url": "http://127.0.0.1:1/v1", "keys": ["sk-x"]}],
        "models": [{"name": "m", "provider": "p"}]
    }))
    .unwrap();
    let merged = local.with_snapshot(snap);
    assert_eq!(merged.server.listen, "127.0.0.1:8080");
    let cfg = DataplaneConfig::from_wire(merged, &example_env()).unwrap();
    assert_eq!(cfg.models[0].name, "m");
    assert_eq!(cfg.keys[0].id, "k");
}

/// Found by `fuzz/`'s config target: a NUL in a comment gave an error with
/// an empty message.
#[test]
fn a_control_character_in_a_comment_is_explained() {
    let errs = DataplaneConfig::from_toml("version = 1\n# a\0b\n", &example_env()).unwrap_err();
    assert!(
        errs.iter().all(|e| !e.message.trim().is_empty()),
        "{errs:?}"
    );
}

/// Found by `fuzz/`'s config target: a line that starts with `=` (no key)
/// was reported with an empty path.
#[test]
fn a_line_without_a_key_is_reported_at_its_line() {
    let errs =
        DataplaneConfig::from_toml("version = 1\n= \"local\".user = \"me\"\n", &example_env())
            .unwrap_err();
    assert!(
        errs.iter()
            .all(|e| !e.path.trim().is_empty() && !e.message.trim().is_empty()),
        "{errs:?}"
    );
    assert!(errs.iter().any(|e| e.path == "<toml line 2>"), "{errs:?}");
}
