//! [`StripeMeterSink`]: the [`MeterSink`] over async-stripe's client
//! (`CreateBillingMeterEvent`, `POST {base}/v1/billing/meter_events`),
//! pointed at Stripe or, by base URL, at the fake in
//! `molt_fakes::fake_stripe`. The same code runs against both.
//!
//! Each call is made once with `RequestStrategy::Idempotent` (the key
//! derived from the identifier); retries and backoff are the flush's, so
//! they are counted and the report row records every attempt.

use super::meter::{MeterEvent, MeterSink, SendError};
use ::stripe::{IdempotencyKey, RequestStrategy, StripeError, StripeRequest};
use std::collections::HashMap;
use std::time::Duration;
use stripe_billing::billing_meter_event::CreateBillingMeterEvent;

#[derive(Clone)]
pub struct StripeMeterSink {
    client: ::stripe::Client,
}

impl std::fmt::Debug for StripeMeterSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client holds the secret key: never print it.
        f.debug_struct("StripeMeterSink").finish_non_exhaustive()
    }
}

impl StripeMeterSink {
    /// `base_url`: `None` for Stripe; `http://127.0.0.1:PORT` for the fake
    /// (a base with a path must end in `/`).
    pub fn new(secret_key: &str, base_url: Option<&str>) -> Result<Self, StripeError> {
        let mut b = ::stripe::ClientBuilder::new(secret_key).timeout(Duration::from_secs(30));
        if let Some(url) = base_url {
            b = b.url(url);
        }
        Ok(Self { client: b.build()? })
    }
}

#[async_trait::async_trait]
impl MeterSink for StripeMeterSink {
    async fn send(&self, e: &MeterEvent) -> Result<(), SendError> {
        let key = IdempotencyKey::new(&e.idempotency_key)
            .map_err(|err| SendError::Rejected(format!("idempotency key: {err}")))?;
        let payload = HashMap::from([
            (
                "stripe_customer_id".to_owned(),
                e.stripe_customer_id.clone(),
            ),
            ("value".to_owned(), e.value.to_string()),
        ]);
        let result = CreateBillingMeterEvent::new(e.event_name.clone(), payload)
            .identifier(e.identifier.clone())
            .timestamp(e.timestamp)
            .customize()
            .request_strategy(RequestStrategy::Idempotent(key))
            .send(&self.client)
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(err) => Err(classify(err)),
        }
    }
}

fn classify(err: StripeError) -> SendError {
    match err {
        StripeError::Stripe(api, status) => {
            let message = api.message.clone().unwrap_or_default();
            if status == 400 && message.contains("An event already exists with identifier") {
                SendError::AlreadyExists
            } else if status >= 500 {
                SendError::ServerError(format!("{status}: {message}"))
            } else if status == 429 || status == 409 {
                SendError::Retryable(format!("{status}: {message}"))
            } else {
                SendError::Rejected(format!("{status}: {message}"))
            }
        }
        // Transport trouble, a timeout or an unreadable answer: the outcome
        // is unknown, and re-sending the same identifier is safe.
        other => SendError::Retryable(other.to_string()),
    }
}
