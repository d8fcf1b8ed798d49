//! Users: create, read, list and update (status, plan, Stripe customer,
//! limit overrides). A user's status decides whether their keys reach the
//! data planes, and their plan and overrides what limits they get there, so
//! a change to any of those refreshes the snapshot. `plan` must name an
//! existing plan (`service::plans`).

use super::{
    audit_entry, check_limits, not_found, paginate, range, Operator, Service, ServiceError,
};
use crate::domain::AuditEntry;
use crate::domain::{new_id, now_ms, LimitOverrides, Page, PageRequest, User, UserStatus};
use crate::store::{store_trait, Range, StoreError, UserLimits};
use serde::{Deserialize, Deserializer};
use utoipa::ToSchema;

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    pub email: String,
    /// Defaults to `active`.
    pub status: Option<UserStatus>,
    /// The name of an existing plan; `null` or absent for none.
    pub plan: Option<String>,
    pub stripe_customer_id: Option<String>,
    /// The user's own limits, each winning over the plan's.
    #[serde(default)]
    pub limits: LimitOverrides,
}

/// Fields to change; absent fields stay. `null` clears `plan` and
/// `stripe_customer_id`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    pub email: Option<String>,
    pub status: Option<UserStatus>,
    /// The name of an existing plan, or `null` for none.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub plan: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub stripe_customer_id: Option<Option<String>>,
    /// Replaces the user's whole set of overrides.
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
pub(super) fn normalise_email(email: &str) -> Result<String, ServiceError> {
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

/// A store error on a user write in the API's terms.
pub(super) fn user_write_error(e: StoreError, user: &User) -> ServiceError {
    match e {
        StoreError::Duplicate => {
            ServiceError::Conflict(format!("a user with email {:?} exists", user.email))
        }
        // Only `plan` refers to another record; the service checked it
        // under the write lock, so this is the foreign key's backstop.
        StoreError::Reference => ServiceError::Invalid(format!(
            "plan: no plan named {:?}",
            user.plan.as_deref().unwrap_or_default()
        )),
        e => e.into(),
    }
}

store_trait! {
    /// Users, as the user services (and billing and bots, through them) use them.
    pub trait UserStore: Send + Sync {
        async fn insert_user(&self, user: &User, audit: &AuditEntry) -> Result<(), StoreError>;
        /// `NotFound` if there is no such user.
        async fn update_user(&self, user: &User, audit: &AuditEntry) -> Result<(), StoreError>;
        async fn get_user(&self, id: &str) -> Result<Option<User>, StoreError>;
        async fn list_users(&self, range: &Range) -> Result<Vec<User>, StoreError>;
    }
}

// === impl Service ===

impl Service {
    /// Would the snapshot still validate with `user`'s plan and overrides?
    async fn check_user_limits(&self, user: &User) -> Result<(), ServiceError> {
        let entry = UserLimits {
            user_id: user.id.clone(),
            plan: user.plan.clone(),
            overrides: user.limits,
        };
        self.publisher
            .check_source(|src| src.set_user_limits(entry))
            .await?;
        Ok(())
    }

    pub async fn create_user(&self, op: &Operator, req: CreateUser) -> Result<User, ServiceError> {
        op.require_admin()?;
        let now = now_ms();
        let mut user = User {
            id: new_id("usr"),
            email: normalise_email(&req.email)?,
            status: req.status.unwrap_or(UserStatus::Active),
            plan: None,
            stripe_customer_id: optional_text("stripe_customer_id", req.stripe_customer_id)?,
            limits: req.limits,
            clerk_id: None,
            clerk_updated_at: None,
            created_at: now,
            updated_at: now,
        };
        check_limits(&user.limits)?;
        let write = self.write_lock.lock().await;
        user.plan = self.existing_plan(req.plan).await?;
        let limited = user.plan.is_some() || !user.limits.is_empty();
        if limited {
            self.check_user_limits(&user).await?;
        }
        self.store_new_user(op, &user).await?;
        drop(write);
        if limited {
            self.refresh_snapshot().await;
        }
        Ok(user)
    }

    /// Store a new user with its `user.create` audit entry, under the
    /// caller's write lock. Every new user passes here, whether an operator
    /// (`create_user`) or the identity provider (`service::identity`) made
    /// it: the one place for what must follow a user's creation.
    pub(super) async fn store_new_user(
        &self,
        op: &Operator,
        user: &User,
    ) -> Result<(), ServiceError> {
        let audit = audit_entry(op, "user.create", &user.id, None, Some(user));
        self.store
            .insert_user(user, &audit)
            .await
            .map_err(|e| user_write_error(e, user))
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
        let stripe = req
            .stripe_customer_id
            .map(|s| optional_text("stripe_customer_id", s))
            .transpose()?;
        if let Some(limits) = &req.limits {
            check_limits(limits)?;
        }
        let write = self.write_lock.lock().await;
        let before = self.get_user(op, id).await?;
        let mut after = before.clone();
        if let Some(email) = email {
            after.email = email;
        }
        if let Some(status) = req.status {
            after.status = status;
        }
        if let Some(plan) = req.plan {
            after.plan = self.existing_plan(plan).await?;
        }
        if let Some(stripe) = stripe {
            after.stripe_customer_id = stripe;
        }
        if let Some(limits) = req.limits {
            after.limits = limits;
        }
        after.updated_at = now_ms();
        let limits_changed = after.limits != before.limits || after.plan != before.plan;
        if limits_changed {
            self.check_user_limits(&after).await?;
        }
        let audit = audit_entry(op, "user.update", id, Some(&before), Some(&after));
        self.store
            .update_user(&after, &audit)
            .await
            .map_err(|e| user_write_error(e, &after))?;
        drop(write);
        if before.status != after.status || limits_changed {
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
