//! Users: create, read, list and update (status, plan, Stripe customer,
//! limit overrides). A user's status decides whether their keys reach the
//! data planes, so every change refreshes the snapshot.

use super::{audit_entry, not_found, paginate, range, Operator, Service, ServiceError};
use crate::domain::{new_id, now_ms, LimitOverrides, Page, PageRequest, User, UserStatus};
use crate::snapshot::apply_user_overrides;
use serde::{Deserialize, Deserializer};
use utoipa::ToSchema;

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    pub email: String,
    /// Defaults to `active`.
    #[serde(default)]
    pub status: Option<UserStatus>,
    #[serde(default)]
    pub plan: Option<String>,
    #[serde(default)]
    pub stripe_customer_id: Option<String>,
    #[serde(default)]
    pub limits: LimitOverrides,
}

/// Fields to change; absent fields stay. `null` clears `plan` and
/// `stripe_customer_id`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub status: Option<UserStatus>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub plan: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub stripe_customer_id: Option<Option<String>>,
    #[serde(default)]
    pub limits: Option<LimitOverrides>,
}

/// Tell "absent" (`None`) from "null" (`Some(None)`).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// Trimmed and lower-cased, so uniqueness does not depend on case.
fn normalise_email(email: &str) -> Result<String, ServiceError> {
    let email = email.trim().to_lowercase();
    let valid = email.len() <= 254
        && !email.chars().any(char::is_whitespace)
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.contains('@')
        });
    if valid {
        Ok(email)
    } else {
        Err(ServiceError::Invalid(format!(
            "not a valid email address: {email:?}"
        )))
    }
}

fn optional_text(field: &str, value: Option<String>) -> Result<Option<String>, ServiceError> {
    match value {
        Some(v) if v.trim().is_empty() || v.len() > 200 => Err(ServiceError::Invalid(format!(
            "{field} must be 1 to 200 characters, or null"
        ))),
        other => Ok(other),
    }
}

// === impl Service ===

impl Service {
    pub async fn create_user(&self, op: &Operator, req: CreateUser) -> Result<User, ServiceError> {
        op.require_admin()?;
        let now = now_ms();
        let user = User {
            id: new_id("usr"),
            email: normalise_email(&req.email)?,
            status: req.status.unwrap_or(UserStatus::Active),
            plan: optional_text("plan", req.plan)?,
            stripe_customer_id: optional_text("stripe_customer_id", req.stripe_customer_id)?,
            limits: req.limits,
            created_at: now,
            updated_at: now,
        };
        let write = self.write_lock.lock().await;
        let overrides = user.limits != LimitOverrides::default();
        if overrides {
            self.publisher
                .check(|snap| apply_user_overrides(&mut snap.limits, &user.id, &user.limits))
                .await?;
        }
        let audit = audit_entry(op, "user.create", &user.id, None, Some(&user));
        self.store
            .insert_user(&user, &audit)
            .await
            .map_err(|e| match e {
                crate::store::StoreError::Duplicate => {
                    ServiceError::Conflict(format!("a user with email {:?} exists", user.email))
                }
                e => e.into(),
            })?;
        drop(write);
        if overrides {
            self.refresh_snapshot().await;
        }
        Ok(user)
    }

    pub async fn get_user(&self, _op: &Operator, id: &str) -> Result<User, ServiceError> {
        self.store
            .get_user(id)
            .await?
            .ok_or_else(|| not_found("user", id))
    }

    pub async fn list_users(
        &self,
        _op: &Operator,
        page: &PageRequest,
    ) -> Result<Page<User>, ServiceError> {
        let items = self.store.list_users(&range(page)?).await?;
        Ok(paginate(items, page, |u| u.id.clone()))
    }

    pub async fn update_user(
        &self,
        op: &Operator,
        id: &str,
        req: UpdateUser,
    ) -> Result<User, ServiceError> {
        op.require_admin()?;
        let email = req.email.as_deref().map(normalise_email).transpose()?;
        let plan = req.plan.map(|p| optional_text("plan", p)).transpose()?;
        let stripe = req
            .stripe_customer_id
            .map(|s| optional_text("stripe_customer_id", s))
            .transpose()?;
        let write = self.write_lock.lock().await;
        let before = self
            .store
            .get_user(id)
            .await?
            .ok_or_else(|| not_found("user", id))?;
        let mut after = before.clone();
        if let Some(email) = email {
            after.email = email;
        }
        if let Some(status) = req.status {
            after.status = status;
        }
        if let Some(plan) = plan {
            after.plan = plan;
        }
        if let Some(stripe) = stripe {
            after.stripe_customer_id = stripe;
        }
        if let Some(limits) = req.limits {
            after.limits = limits;
        }
        after.updated_at = now_ms();
        if after.limits != before.limits {
            self.publisher
                .check(|snap| apply_user_overrides(&mut snap.limits, &after.id, &after.limits))
                .await?;
        }
        let audit = audit_entry(op, "user.update", id, Some(&before), Some(&after));
        self.store
            .update_user(&after, &audit)
            .await
            .map_err(|e| match e {
                crate::store::StoreError::Duplicate => {
                    ServiceError::Conflict(format!("a user with email {:?} exists", after.email))
                }
                e => e.into(),
            })?;
        drop(write);
        if before.status != after.status || before.limits != after.limits {
            self.refresh_snapshot().await;
        }
        Ok(after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised_and_checked() {
        assert_eq!(normalise_email(" A@B.io ").unwrap(), "a@b.io");
        for bad in ["", "a", "@b.io", "a@b", "a b@c.io", "a@b@c.io"] {
            assert!(normalise_email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn update_tells_null_from_absent() {
        let u: UpdateUser = serde_json::from_str(r#"{"plan": null}"#).unwrap();
        assert_eq!(u.plan, Some(None));
        assert_eq!(u.stripe_customer_id, None);
        assert!(serde_json::from_str::<UpdateUser>(r#"{"nope": 1}"#).is_err());
    }
}
