//! Plans: named limit sets users are on. A plan's limits are checked by
//! the contract's own validation (`molt_config::limits::RawLimitSet`) and
//! reach every user on it through the next snapshot, layered between the
//! deployment defaults and the user's own overrides
//! ([`crate::snapshot::apply_user_limits`]).
//!
//! A plan is named by a slug that never changes, because `users.plan`
//! refers to it by name (a foreign key); a plan with users on it cannot be
//! deleted.

use super::prices::check_markup;
use super::{
    audit_entry, check_limits, not_found, paginate, range, Operator, Service, ServiceError,
};
use crate::domain::AuditEntry;
use crate::domain::{new_id, now_ms, Page, PageRequest, Plan};
use crate::store::{store_trait, Range, StoreError};
use molt_config::limits::RawLimitSet;
use serde::Deserialize;
use utoipa::ToSchema;

/// Longest plan name.
const MAX_NAME: usize = 64;
/// Longest plan description.
const MAX_DESCRIPTION: usize = 500;

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePlan {
    /// A slug: lower-case letters, digits and `-`, starting and ending with
    /// a letter or digit, at most 64 characters. Cannot change later.
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Absent fields set no limit of the plan's own (the deployment
    /// default applies); zero is an error.
    #[serde(default)]
    pub limits: RawLimitSet,
    /// Markup over the models' prices in what the plan's users are billed,
    /// in basis points (100 = 1%; 0 to 100000). Default 0.
    #[serde(default)]
    pub markup_bp: i64,
}

/// Fields to change; absent fields stay. `limits` replaces the plan's
/// whole limit set. The name cannot change (users refer to it).
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdatePlan {
    pub description: Option<String>,
    pub limits: Option<RawLimitSet>,
    /// Applies to usage ingested from now on; stored costs keep theirs.
    pub markup_bp: Option<i64>,
}

fn check_name(name: &str) -> Result<(), ServiceError> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.chars().all(|c| ok_char(c) || c == '-')
        && name.starts_with(ok_char)
        && name.ends_with(ok_char);
    if valid {
        Ok(())
    } else {
        Err(ServiceError::Invalid(format!(
            "name: must be a slug of 1 to {MAX_NAME} lower-case letters, digits and '-', \
             starting and ending with a letter or digit; got {name:?}"
        )))
    }
}

fn check_description(description: &str) -> Result<(), ServiceError> {
    if description.chars().count() > MAX_DESCRIPTION {
        return Err(ServiceError::Invalid(format!(
            "description: must be at most {MAX_DESCRIPTION} characters"
        )));
    }
    Ok(())
}

store_trait! {
    /// Plans, as the plan and user services use them.
    pub trait PlanStore: Send + Sync {
        async fn insert_plan(&self, plan: &Plan, audit: &AuditEntry) -> Result<(), StoreError>;
        /// Change a plan's description and limits (the name is fixed).
        async fn update_plan(&self, plan: &Plan, audit: &AuditEntry) -> Result<(), StoreError>;
        /// `Reference` while users are on it.
        async fn delete_plan(&self, id: &str, audit: &AuditEntry) -> Result<(), StoreError>;
        /// By id or by name.
        async fn get_plan(&self, id_or_name: &str) -> Result<Option<Plan>, StoreError>;
        async fn list_plans(&self, range: &Range) -> Result<Vec<Plan>, StoreError>;
        /// How many users are on the plan named `name`.
        async fn count_plan_users(&self, name: &str) -> Result<i64, StoreError>;
    }
}

// === impl Service ===

impl Service {
    pub async fn create_plan(&self, op: &Operator, req: CreatePlan) -> Result<Plan, ServiceError> {
        op.require_admin()?;
        check_name(&req.name)?;
        check_description(&req.description)?;
        check_limits(&req.limits)?;
        check_markup(req.markup_bp)?;
        let now = now_ms();
        let plan = Plan {
            id: new_id("pln"),
            name: req.name,
            description: req.description,
            limits: req.limits,
            markup_bp: req.markup_bp,
            created_at: now,
            updated_at: now,
        };
        // No user can be on a new plan, so the snapshot does not change:
        // the field checks above are all the data plane would do.
        let write = self.write_lock.lock().await;
        let audit = audit_entry(op, "plan.create", &plan.id, None, Some(&plan));
        self.store
            .insert_plan(&plan, &audit)
            .await
            .map_err(|e| match e {
                crate::store::StoreError::Duplicate => {
                    ServiceError::Conflict(format!("a plan named {:?} exists", plan.name))
                }
                e => e.into(),
            })?;
        drop(write);
        Ok(plan)
    }

    pub async fn get_plan(&self, _op: &Operator, id: &str) -> Result<Plan, ServiceError> {
        self.store
            .get_plan(id)
            .await?
            .ok_or_else(|| not_found("plan", id))
    }

    pub async fn list_plans(
        &self,
        _op: &Operator,
        page: &PageRequest,
    ) -> Result<Page<Plan>, ServiceError> {
        let items = self.store.list_plans(&range(page)?).await?;
        Ok(paginate(items, page, |p| p.id.clone()))
    }

    /// Change a plan; its users get the new limits with the next snapshot.
    pub async fn update_plan(
        &self,
        op: &Operator,
        id: &str,
        req: UpdatePlan,
    ) -> Result<Plan, ServiceError> {
        op.require_admin()?;
        if let Some(d) = &req.description {
            check_description(d)?;
        }
        if let Some(l) = &req.limits {
            check_limits(l)?;
        }
        if let Some(m) = req.markup_bp {
            check_markup(m)?;
        }
        let write = self.write_lock.lock().await;
        let before = self.get_plan(op, id).await?;
        let mut after = before.clone();
        if let Some(d) = req.description {
            after.description = d;
        }
        if let Some(l) = req.limits {
            after.limits = l;
        }
        if let Some(m) = req.markup_bp {
            after.markup_bp = m;
        }
        after.updated_at = now_ms();
        let checked = after.clone();
        self.publisher
            .check_source(|src| {
                if let Some(p) = src.plans.iter_mut().find(|p| p.id == checked.id) {
                    *p = checked;
                }
            })
            .await?;
        let audit = audit_entry(op, "plan.update", &before.id, Some(&before), Some(&after));
        self.store.update_plan(&after, &audit).await?;
        drop(write);
        if before.limits != after.limits {
            self.refresh_snapshot().await;
        }
        Ok(after)
    }

    /// Delete a plan no user is on.
    pub async fn delete_plan(&self, op: &Operator, id: &str) -> Result<(), ServiceError> {
        op.require_admin()?;
        let write = self.write_lock.lock().await;
        let before = self.get_plan(op, id).await?;
        let users = self.store.count_plan_users(&before.name).await?;
        if users > 0 {
            return Err(ServiceError::Conflict(format!(
                "plan {:?} is in use by {users} user(s); move them to another plan first",
                before.name
            )));
        }
        let audit = audit_entry(op, "plan.delete", &before.id, Some(&before), None);
        // The foreign key from `users.plan` is the backstop should a user
        // be put on it by something outside this service.
        self.store
            .delete_plan(&before.id, &audit)
            .await
            .map_err(|e| match e {
                crate::store::StoreError::Reference => ServiceError::Conflict(format!(
                    "plan {:?} is in use; move its users to another plan first",
                    before.name
                )),
                e => e.into(),
            })?;
        drop(write);
        Ok(())
    }

    /// The name of an existing plan, for a user's `plan` field; unknown
    /// names are refused with the field named.
    pub(super) async fn existing_plan(
        &self,
        name: Option<String>,
    ) -> Result<Option<String>, ServiceError> {
        let Some(name) = name else { return Ok(None) };
        match self.store.get_plan(&name).await? {
            // `get_plan` also finds by id; users refer to plans by name.
            Some(p) if p.name == name => Ok(Some(name)),
            _ => Err(ServiceError::Invalid(format!(
                "plan: no plan named {name:?} (create it under /api/v1/plans first)"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_slugs() {
        for good in ["pro", "team-2025", "a", "0"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        let long = "a".repeat(MAX_NAME + 1);
        for bad in [
            "",
            "Pro",
            "pro plan",
            "-pro",
            "pro-",
            "pro_1",
            "prö",
            long.as_str(),
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn zero_limits_are_refused_with_their_path() {
        let limits = RawLimitSet {
            requests_per_minute: Some(0),
            tokens_per_day: Some(0),
            tokens_per_minute: Some(5),
            ..RawLimitSet::default()
        };
        let Err(ServiceError::Invalid(msg)) = check_limits(&limits) else {
            panic!("zero limits accepted")
        };
        assert!(msg.contains("limits.requests_per_minute:"), "{msg}");
        assert!(msg.contains("limits.tokens_per_day:"), "{msg}");
        assert!(!msg.contains("tokens_per_minute"), "{msg}");
    }
}
