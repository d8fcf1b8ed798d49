//! Who may call: operators (bootstrap token from config, or admin tokens
//! stored hashed, each with a role), data planes (one shared token from
//! config), and the client JWTs minted for users' app backends.

use super::{audit_entry, not_found, paginate, range, Operator, Service, ServiceError};
use crate::crypto::{new_admin_token, sha256_hex};
use crate::domain::AuditEntry;
use crate::domain::{new_id, now_ms, AdminToken, Millis, Page, PageRequest, Role, UserStatus};
use crate::store::{store_trait, Range, StoreError};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Lifetime of a minted client JWT when none is asked for.
const DEFAULT_JWT_TTL_SECS: u64 = 15 * 60;

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAdminToken {
    pub name: String,
    pub role: Role,
}

/// A new operator token: `secret` is shown this once.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CreatedAdminToken {
    pub token: AdminToken,
    pub secret: String,
}

/// Body of `POST /api/v1/auth/token`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MintToken {
    pub user_id: String,
    /// Lifetime in seconds (default 900, at most the configured maximum).
    pub ttl_seconds: Option<u64>,
    /// Models (names or aliases) the token may use; absent means all.
    pub models: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MintedToken {
    /// HS256 JWT every data plane accepts as a bearer credential.
    pub token: String,
    pub expires_at: Millis,
}

#[derive(Debug, Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    models: Option<&'a [String]>,
}

/// Compare two hex digests without an early exit.
fn same_digest(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

store_trait! {
    /// Operator tokens, as operator auth uses them.
    pub trait AdminTokenStore: Send + Sync {
        async fn insert_admin_token(
            &self,
            token: &AdminToken,
            audit: &AuditEntry,
        ) -> Result<(), StoreError>;
        /// `NotFound` if there is no such unrevoked token.
        async fn revoke_admin_token(
            &self,
            id: &str,
            at: Millis,
            audit: &AuditEntry,
        ) -> Result<(), StoreError>;
        /// An unrevoked token with this hash.
        async fn admin_token_by_hash(&self, sha256: &str) -> Result<Option<AdminToken>, StoreError>;
        async fn list_admin_tokens(&self, range: &Range) -> Result<Vec<AdminToken>, StoreError>;
    }
}

// === impl Service ===

impl Service {
    /// The operator a bearer token belongs to.
    pub async fn authenticate_operator(
        &self,
        bearer: Option<&str>,
    ) -> Result<Operator, ServiceError> {
        let token = bearer
            .filter(|t| !t.is_empty())
            .ok_or(ServiceError::Unauthorized)?;
        let digest = sha256_hex(token);
        if let Some(boot) = &self.settings.bootstrap_admin_sha256 {
            if same_digest(boot, &digest) {
                return Ok(Operator {
                    actor: "bootstrap".into(),
                    role: Role::Admin,
                });
            }
        }
        let found = self.store.admin_token_by_hash(&digest).await?;
        found
            .map(|t| Operator {
                actor: format!("admin_token:{}", t.id),
                role: t.role,
            })
            .ok_or(ServiceError::Unauthorized)
    }

    /// Whether a bearer token is the data planes' token.
    pub fn authenticate_dataplane(&self, bearer: Option<&str>) -> Result<(), ServiceError> {
        let token = bearer
            .filter(|t| !t.is_empty())
            .ok_or(ServiceError::Unauthorized)?;
        if same_digest(&self.settings.dataplane_token_sha256, &sha256_hex(token)) {
            Ok(())
        } else {
            Err(ServiceError::Unauthorized)
        }
    }

    pub async fn create_admin_token(
        &self,
        op: &Operator,
        req: CreateAdminToken,
    ) -> Result<CreatedAdminToken, ServiceError> {
        op.require_admin()?;
        let name = req.name.trim().to_owned();
        if name.is_empty() || name.len() > 200 {
            return Err(ServiceError::Invalid(
                "name must be 1 to 200 characters".into(),
            ));
        }
        let secret = new_admin_token();
        let token = AdminToken {
            id: new_id("adm"),
            name,
            role: req.role,
            created_at: now_ms(),
            revoked_at: None,
            sha256: sha256_hex(&secret),
        };
        let _write = self.write_lock.lock().await;
        let audit = audit_entry(op, "admin_token.create", &token.id, None, Some(&token));
        self.store.insert_admin_token(&token, &audit).await?;
        Ok(CreatedAdminToken { token, secret })
    }

    pub async fn list_admin_tokens(
        &self,
        _op: &Operator,
        page: &PageRequest,
    ) -> Result<Page<AdminToken>, ServiceError> {
        let items = self.store.list_admin_tokens(&range(page)?).await?;
        Ok(paginate(items, page, |t| t.id.clone()))
    }

    pub async fn revoke_admin_token(&self, op: &Operator, id: &str) -> Result<(), ServiceError> {
        op.require_admin()?;
        let _write = self.write_lock.lock().await;
        let audit = audit_entry::<()>(op, "admin_token.revoke", id, None, None);
        self.store
            .revoke_admin_token(id, now_ms(), &audit)
            .await
            .map_err(|e| match e {
                crate::store::StoreError::NotFound => not_found("admin token", id),
                e => e.into(),
            })
    }

    /// A short-lived client JWT for an active user, in the format every
    /// data plane verifies (HS256, `iss`, `sub` = user id, `exp`, `models`).
    pub async fn mint_client_token(
        &self,
        op: &Operator,
        req: MintToken,
    ) -> Result<MintedToken, ServiceError> {
        op.require_admin()?;
        let ttl = req.ttl_seconds.unwrap_or(DEFAULT_JWT_TTL_SECS);
        let max = self.settings.max_jwt_ttl.as_secs();
        if ttl == 0 || ttl > max {
            return Err(ServiceError::Invalid(format!(
                "ttl_seconds must be between 1 and {max}"
            )));
        }
        let user = self.get_user(op, &req.user_id).await?;
        if user.status != UserStatus::Active {
            return Err(ServiceError::Conflict(format!(
                "user {:?} is {}, not active",
                user.id,
                user.status.as_str()
            )));
        }
        if let Some(models) = &req.models {
            let snap = self.publisher.compile(now_ms()).await?;
            for name in models {
                let known = snap
                    .models
                    .iter()
                    .any(|m| &m.name == name || m.aliases.contains(name));
                if !known {
                    return Err(ServiceError::Invalid(format!("unknown model {name:?}")));
                }
            }
        }
        let now_s = u64::try_from(now_ms() / 1000).unwrap_or(0);
        let claims = Claims {
            iss: &self.settings.jwt.issuer,
            sub: &user.id,
            iat: now_s,
            exp: now_s + ttl,
            models: req.models.as_deref(),
        };
        let key =
            jsonwebtoken::EncodingKey::from_secret(self.settings.jwt.secret.expose().as_bytes());
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &key,
        )
        .map_err(|e| ServiceError::Internal(format!("cannot sign the token: {e}")))?;
        let audit = audit_entry(
            op,
            "auth.token",
            &user.id,
            None,
            Some(&serde_json::json!({"ttl_seconds": ttl, "models": req.models})),
        );
        self.store.insert_audit(&audit).await?;
        Ok(MintedToken {
            token,
            expires_at: i64::try_from((now_s + ttl) * 1000).unwrap_or(i64::MAX),
        })
    }
}
