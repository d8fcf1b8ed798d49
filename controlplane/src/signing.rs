//! Webhook signatures as the control plane's senders make them (Stripe's
//! `Stripe-Signature`, Svix's for Clerk): HMAC-SHA256 over the parts a
//! sender signs, checked against every signature a delivery carries in
//! constant time, and the timestamp tolerance both apply. Each sender's
//! header format is parsed where its webhook is handled.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Does any of `candidates` equal HMAC-SHA256(`key`, the concatenation of
/// `signed`)? Each comparison is constant-time (`verify_slice`); several
/// candidates let a sender rotate its secret (old and new both signed).
pub fn hmac_sha256_matches(key: &[u8], signed: &[&[u8]], candidates: &[Vec<u8>]) -> bool {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return false;
    };
    for part in signed {
        mac.update(part);
    }
    // The MAC is cloned per candidate because verifying consumes it.
    candidates
        .iter()
        .any(|sig| mac.clone().verify_slice(sig).is_ok())
}

/// HMAC-SHA256(`key`, the concatenation of `signed`): what a sender (and
/// the fakes, and tests) would put in the header.
pub fn hmac_sha256(key: &[u8], signed: &[&[u8]]) -> Vec<u8> {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return Vec::new();
    };
    for part in signed {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

/// Is a delivery's timestamp within `tolerance_secs` of now, either way?
/// (Too old is a replay; too far ahead is a clock or a forgery.)
pub fn within_tolerance(now_secs: i64, timestamp_secs: i64, tolerance_secs: i64) -> bool {
    now_secs.abs_diff(timestamp_secs) <= tolerance_secs.unsigned_abs()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_candidate_may_match() {
        let good = hmac_sha256(b"k", &[b"a.", b"b"]);
        let other = hmac_sha256(b"other", &[b"a.", b"b"]);
        assert!(hmac_sha256_matches(
            b"k",
            &[b"a.b"],
            &[other.clone(), good.clone()]
        ));
        assert!(!hmac_sha256_matches(b"k", &[b"a.c"], &[good]));
        assert!(!hmac_sha256_matches(b"k", &[b"a.b"], &[other]));
        assert!(!hmac_sha256_matches(b"k", &[b"a.b"], &[]));
    }

    #[test]
    fn tolerance_is_both_ways_and_inclusive() {
        assert!(within_tolerance(1300, 1000, 300));
        assert!(within_tolerance(700, 1000, 300));
        assert!(!within_tolerance(1301, 1000, 300));
        assert!(!within_tolerance(699, 1000, 300));
    }
}
