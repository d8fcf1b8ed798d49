//! The data plane's config loader (`molt_config::dataplane`): any TOML
//! text through the real `from_toml`, and any control-plane snapshot
//! through `parse_snapshot` merged over a file's config, the way `sync`
//! applies one. Invariants: no panic, and every error names the field it
//! is about and says what is wrong.
#![no_main]

use libfuzzer_sys::fuzz_target;
use molt_config::contract::parse_snapshot;
use molt_config::dataplane::DataplaneConfig;
use molt_config::error::ConfigErrors;
use std::collections::HashMap;

/// The file a snapshot is merged over (`config/examples/minimal.toml`).
const BASE: &str = include_str!("../../config/examples/minimal.toml");

fn env() -> HashMap<&'static str, &'static str> {
    HashMap::from([
        ("OPENAI_API_KEY", "sk-test-1"),
        ("ANTHROPIC_API_KEY", "sk-ant-test"),
        ("MOLT_JWT_SECRET", "0123456789abcdef0123456789abcdef"),
        ("MOLT_DATAPLANE_TOKEN", "dp-token-test"),
    ])
}

fn check(result: Result<DataplaneConfig, ConfigErrors>) {
    if let Err(errs) = result {
        assert!(!errs.is_empty(), "an error without any error in it");
        for e in errs.iter() {
            assert!(!e.path.trim().is_empty(), "error without a path: {e}");
            assert!(!e.message.trim().is_empty(), "error without a message: {e}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let env = env();
    if let Ok(text) = std::str::from_utf8(data) {
        check(DataplaneConfig::from_toml(text, &env));
    }
    if let Ok(parsed) = parse_snapshot(data) {
        let Ok(base) = DataplaneConfig::parse_toml(BASE) else {
            panic!("the base config parses");
        };
        let merged = base.with_snapshot(parsed.snapshot);
        check(DataplaneConfig::from_wire(merged, &env));
    }
});
