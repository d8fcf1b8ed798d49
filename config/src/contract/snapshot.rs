//! The config exchange: the long poll's query and how a data plane reads
//! the snapshot it is answered with.

use crate::wire::RawSnapshot;
use serde::{Deserialize, Serialize};

/// Query of `GET /internal/v1/config`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigPoll {
    /// The version the data plane has; absent means none.
    pub after: Option<u64>,
}

impl ConfigPoll {
    /// The query string, without the `?`.
    pub fn query(after: u64) -> String {
        format!("after={after}")
    }
}

/// A snapshot as a data plane read it.
#[derive(Debug, Clone)]
pub struct ParsedSnapshot {
    pub snapshot: RawSnapshot,
    /// Paths of the fields this build does not know (a newer control plane
    /// sent them); the snapshot is used without them.
    pub unknown_fields: Vec<String>,
}

/// Read a snapshot body, ignoring (and naming) fields this build does not
/// know, so a control plane upgraded before its data planes does not stop
/// them from taking its changes. Anything else wrong is an error.
pub fn parse_snapshot(body: &[u8]) -> Result<ParsedSnapshot, serde_json::Error> {
    let (snapshot, unknown_fields) = crate::unknown::from_json(body)?;
    Ok(ParsedSnapshot {
        snapshot,
        unknown_fields,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_from_a_newer_control_plane_are_ignored_and_named() {
        let body = br#"{"version": 7, "replicas_hint": 3,
            "keys": [{"id": "k1", "user": "u1", "sha256": "ab", "scopes": ["chat"]}],
            "limits": {"tokens_per_minute": 10, "users": [{"user": "u1", "burst": 2}]}}"#;
        let parsed = parse_snapshot(body).unwrap();
        assert_eq!(parsed.snapshot.version, 7);
        assert_eq!(parsed.snapshot.keys[0].id, "k1");
        assert_eq!(parsed.snapshot.limits.tokens_per_minute, Some(10));
        assert_eq!(
            parsed.unknown_fields,
            ["replicas_hint", "keys[0].scopes", "limits.users[0].burst"]
        );
    }

    #[test]
    fn a_snapshot_of_the_wrong_shape_is_still_an_error() {
        assert!(parse_snapshot(br#"{"version": "seven"}"#).is_err());
        assert!(parse_snapshot(br#"{"keys": [{"id": "k1"}]}"#).is_err());
        assert!(parse_snapshot(b"{not json").is_err());
    }

    #[test]
    fn the_poll_query_is_what_the_control_plane_reads() {
        let q: ConfigPoll = serde_json::from_value(serde_json::json!({"after": 41})).unwrap();
        assert_eq!(q.after, Some(41));
        assert_eq!(ConfigPoll::query(41), "after=41");
    }
}
