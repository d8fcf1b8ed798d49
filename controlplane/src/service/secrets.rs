//! Secrets at rest across a rotation of the at-rest key: which key each
//! sealed value is under ([`SecretsStatus`]), and re-encryption of every
//! value to the current key ([`Service::reencrypt_secrets`]).
//!
//! Re-encryption runs while the control plane serves. Each value is
//! rewritten in its own small statement, and only if it is unchanged since
//! it was read, so a provider updated meanwhile keeps its update (sealed
//! by its writer's current key; a later run looks at it again). The
//! plaintext never changes, so neither does the compiled snapshot: data
//! planes see nothing. A run is idempotent and resumable: values already
//! under the current key are left alone, and a run cut short leaves each
//! value under the old key or the new one, both of which open.

use super::{Operator, Service, ServiceError};
use crate::crypto::{sealed_with, SealedWith};
use crate::domain::{SealedKind, SealedValue};
use crate::store::{store_trait, StoreError};
use serde::Serialize;
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// Rows read per query.
const PAGE: i64 = 100;

store_trait! {
    /// Sealed values of every kind, as re-encryption reads and rewrites them.
    pub trait SealedStore: Send + Sync {
        /// Up to `limit` values of `kind` after row id `after`, by id.
        async fn sealed_values(
            &self,
            kind: SealedKind,
            after: &str,
            limit: i64,
        ) -> Result<Vec<SealedValue>, StoreError>;
        /// Rewrite `value` unless it changed since read; whether it was.
        async fn reseal(
            &self,
            kind: SealedKind,
            value: &SealedValue,
            resealed: &str,
        ) -> Result<bool, StoreError>;
    }
}

/// Which keys the values sealed at rest are under.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SecretsStatus {
    /// The key id new values are sealed with.
    pub current_key_id: String,
    /// Key ids that only open what they sealed; drop them once `stale` is 0.
    pub previous_key_ids: Vec<String>,
    /// Sealed values per key id (`v1`: sealed before key ids, by any key).
    pub sealed: BTreeMap<String, u64>,
    /// Values not under the current key: what re-encryption rewrites.
    pub stale: u64,
    /// Key ids values are sealed with that no configured key has: those
    /// values do not open until the key is configured again.
    pub missing_key_ids: Vec<String>,
}

/// What one re-encryption run did, and where things stand after it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReencryptReport {
    /// Values this run rewrote under the current key.
    pub rewritten: u64,
    /// Values that changed while this run rewrote them (left as their
    /// writer sealed them; run again if they are still stale).
    pub changed_meanwhile: u64,
    /// Values that do not open (a key id no configured key has, tampering).
    pub failed: Vec<SealedFailure>,
    /// After the run.
    pub status: SecretsStatus,
}

/// A value re-encryption could not open.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SealedFailure {
    pub kind: SealedKind,
    /// The row's id (a provider's or a bot's).
    pub id: String,
    /// Why, naming a missing key's id (never a key).
    pub error: String,
}

/// Every value of every kind, a page at a time.
struct Pages {
    kinds: std::slice::Iter<'static, SealedKind>,
    kind: Option<SealedKind>,
    after: String,
}

impl Pages {
    fn new() -> Self {
        let mut kinds = SealedKind::ALL.iter();
        let kind = kinds.next().copied();
        Self {
            kinds,
            kind,
            after: String::new(),
        }
    }

    /// The next non-empty page and its kind; `None` after the last.
    async fn next(
        &mut self,
        store: &dyn SealedStore,
    ) -> Result<Option<(SealedKind, Vec<SealedValue>)>, StoreError> {
        while let Some(kind) = self.kind {
            let page = store.sealed_values(kind, &self.after, PAGE).await?;
            match page.last() {
                Some(last) if page.len() as i64 == PAGE => self.after = last.id.clone(),
                _ => {
                    self.kind = self.kinds.next().copied();
                    self.after.clear();
                }
            }
            if !page.is_empty() {
                return Ok(Some((kind, page)));
            }
        }
        Ok(None)
    }
}

// === impl Service ===

impl Service {
    /// Which keys the sealed values are under.
    pub async fn secrets_status(&self, _op: &Operator) -> Result<SecretsStatus, ServiceError> {
        let cipher = &self.settings.cipher;
        let mut status = SecretsStatus {
            current_key_id: cipher.current_kid().to_owned(),
            previous_key_ids: cipher.previous_kids().map(str::to_owned).collect(),
            sealed: BTreeMap::new(),
            stale: 0,
            missing_key_ids: Vec::new(),
        };
        let mut pages = Pages::new();
        while let Some((_, page)) = pages.next(self.store.as_ref()).await? {
            for value in &page {
                let with = sealed_with(&value.sealed);
                if let Ok(SealedWith::Kid(kid)) = &with {
                    let known =
                        kid == cipher.current_kid() || cipher.previous_kids().any(|k| k == kid);
                    if !known && !status.missing_key_ids.contains(kid) {
                        status.missing_key_ids.push(kid.clone());
                    }
                }
                let label = with.map_or_else(|_| "malformed".to_owned(), |w| w.label().to_owned());
                *status.sealed.entry(label).or_default() += 1;
                status.stale += u64::from(cipher.is_stale(&value.sealed));
            }
        }
        status.missing_key_ids.sort();
        Ok(status)
    }

    /// At start: a warning when sealed values are not under the current
    /// key (a rotation under way: re-encrypt), an error when some name a
    /// key that is not configured (they do not open).
    pub async fn log_secrets_status(&self) {
        let system = Operator {
            actor: "system".into(),
            role: crate::domain::Role::ReadOnly,
        };
        match self.secrets_status(&system).await {
            Ok(s) if !s.missing_key_ids.is_empty() => tracing::error!(
                missing_key_ids = ?s.missing_key_ids,
                sealed = ?s.sealed,
                "sealed values name at-rest keys that are not configured: they do not open"
            ),
            Ok(s) if s.stale > 0 => tracing::warn!(
                stale = s.stale,
                current_key_id = s.current_key_id,
                sealed = ?s.sealed,
                "sealed values not under the current at-rest key: run `molt ctl secrets reencrypt`"
            ),
            Ok(_) => {}
            Err(error) => tracing::error!(%error, "cannot read sealed values"),
        }
    }

    /// Rewrite every value not under the current key with it, then report
    /// where things stand. Admin only; audited as `secrets.reencrypt`
    /// (counts and key ids only).
    pub async fn reencrypt_secrets(&self, op: &Operator) -> Result<ReencryptReport, ServiceError> {
        op.require_admin()?;
        let cipher = &self.settings.cipher;
        let (mut rewritten, mut changed_meanwhile, mut failed) = (0, 0, Vec::new());
        let mut pages = Pages::new();
        while let Some((kind, page)) = pages.next(self.store.as_ref()).await? {
            for value in page.iter().filter(|v| cipher.is_stale(&v.sealed)) {
                let resealed = cipher
                    .open(&value.sealed, &value.id)
                    .and_then(|plain| cipher.seal(&plain, &value.id));
                match resealed {
                    Ok(resealed) => {
                        if self.store.reseal(kind, value, &resealed).await? {
                            rewritten += 1;
                        } else {
                            changed_meanwhile += 1;
                        }
                    }
                    Err(error) => failed.push(SealedFailure {
                        kind,
                        id: value.id.clone(),
                        error: error.to_string(),
                    }),
                }
            }
        }
        let report = ReencryptReport {
            rewritten,
            changed_meanwhile,
            failed,
            status: self.secrets_status(op).await?,
        };
        let detail = serde_json::json!({
            "current_key_id": report.status.current_key_id,
            "rewritten": report.rewritten,
            "changed_meanwhile": report.changed_meanwhile,
            "failed": report.failed.len(),
            "sealed": report.status.sealed,
        });
        self.audit_action(op, "secrets.reencrypt", cipher.current_kid(), &detail)
            .await?;
        if report.rewritten > 0 || !report.failed.is_empty() {
            tracing::info!(
                rewritten = report.rewritten,
                failed = report.failed.len(),
                stale = report.status.stale,
                current_key_id = cipher.current_kid(),
                "sealed values re-encrypted"
            );
        }
        Ok(report)
    }
}
