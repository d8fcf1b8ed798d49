//! WebSocket tickets (`dataplane::ws::ticket`): any ticket text is refused
//! without a panic unless it is one this process issued; an issued ticket
//! verifies for its holder until it expires, only once, only under its
//! secret, and any one-byte change to it is refused.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use molt_dataplane::ws::error::WsReject;
use molt_dataplane::ws::ticket::{TicketHolder, Tickets};
use std::time::Duration;

#[derive(Arbitrary, Debug)]
struct Input {
    /// A ticket as a client might send it.
    forged: String,
    key_id: String,
    user: String,
    secret: Option<String>,
    now_ms: u64,
    ttl_ms: u64,
    /// Where to change the issued ticket, and the byte to put there.
    flip: (u16, u8),
}

fuzz_target!(|input: Input| {
    let tickets = Tickets::new();
    let secret = input.secret.as_deref();
    assert!(tickets.verify(&input.forged, input.now_ms, secret).is_err());

    let holder = TicketHolder {
        key_id: input.key_id,
        user: input.user,
    };
    let ttl = Duration::from_millis(input.ttl_ms);
    let Ok((ticket, expires)) = tickets.issue(&holder, ttl, input.now_ms, secret) else {
        return;
    };
    assert!(expires >= input.now_ms);
    let before = expires.saturating_sub(1).max(input.now_ms);
    if expires > input.now_ms {
        let verified = tickets
            .verify(&ticket, before, secret)
            .expect("a fresh ticket verifies");
        assert_eq!(verified.holder, holder);
        assert_eq!(verified.expires_ms, expires);
    }
    assert!(matches!(
        tickets.verify(&ticket, expires, secret),
        Err(WsReject::TicketExpired)
    ));
    let other = match secret {
        Some(s) => format!("{s}-other"),
        None => "another-secret".to_owned(),
    };
    assert!(tickets.verify(&ticket, before, Some(&other)).is_err());

    let mut changed = ticket.clone().into_bytes();
    let at = usize::from(input.flip.0) % changed.len();
    if changed[at] != input.flip.1 {
        changed[at] = input.flip.1;
        if let Ok(changed) = String::from_utf8(changed) {
            assert!(
                tickets.verify(&changed, before, secret).is_err(),
                "a changed ticket verified: {changed}"
            );
        }
    }
    if expires > input.now_ms {
        assert_eq!(tickets.redeem(&ticket, before, secret).ok(), Some(holder));
        assert!(matches!(
            tickets.redeem(&ticket, before, secret),
            Err(WsReject::TicketReused)
        ));
    }
});
