//! The `Stripe-Signature` check (`controlplane::billing::webhook::
//! verify_signature`): any header, body, secret, clock and tolerance are
//! judged without a panic; a header signed the way Stripe signs verifies
//! within the tolerance and only then, and not for another body or secret.
#![no_main]

use arbitrary::Arbitrary;
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use molt_controlplane::billing::webhook::verify_signature;
use sha2::Sha256;

#[derive(Arbitrary, Debug)]
struct Input {
    header: String,
    body: Vec<u8>,
    secret: String,
    now: i64,
    tolerance: i64,
    /// The timestamp a genuine delivery is signed with.
    signed_at: i64,
}

fuzz_target!(|input: Input| {
    let Input {
        header,
        body,
        secret,
        now,
        tolerance,
        signed_at,
    } = input;
    let _ = verify_signature(&header, &body, &secret, now, tolerance);

    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(format!("{signed_at}.").as_bytes());
    mac.update(&body);
    let sig = hex::encode(mac.finalize().into_bytes());
    let genuine = format!("t={signed_at},v1={sig}");
    let within = now.abs_diff(signed_at) <= tolerance.unsigned_abs();
    let ok = verify_signature(&genuine, &body, &secret, now, tolerance).is_ok();
    assert_eq!(ok, within, "genuine at {signed_at}, now {now} ±{tolerance}");
    if within {
        let mut other_body = body.clone();
        other_body.push(b' ');
        assert!(verify_signature(&genuine, &other_body, &secret, now, tolerance).is_err());
        let other_secret = format!("{secret}x");
        assert!(verify_signature(&genuine, &body, &other_secret, now, tolerance).is_err());
    }
});
