//! `/api/v1`: the operators' API. Each handler extracts, calls one service
//! method and serialises; the `#[utoipa::path]` on it is the OpenAPI
//! document's only source.

use super::error::{ApiError, ApiJson, ApiQuery, ErrorBody};
use super::{AppState, Op};
use crate::domain::{
    AdminToken, ApiKey, AuditEntry, Page, PageRequest, Plan, PricedModel, Provider, User,
};
use crate::service::auth::{CreateAdminToken, CreatedAdminToken, MintToken, MintedToken};
use crate::service::keys::{CreateKey, CreatedKey};
use crate::service::limits::LimitsDocument;
use crate::service::models::{CreateModel, UpdateModel};
use crate::service::plans::{CreatePlan, UpdatePlan};
use crate::service::providers::{CreateProvider, UpdateProvider};
use crate::service::secrets::{ReencryptReport, SecretsStatus};
use crate::service::usage::{UsageQuery, UsageReport};
use crate::service::users::{CreateUser, UpdateUser};
use crate::service::DEFAULT_PAGE;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use utoipa::IntoParams;

type ApiResult<T> = Result<T, ApiError>;

/// `?limit=&cursor=` of every list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    /// 1 to 500, default 50.
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

impl ListQuery {
    fn page(self) -> PageRequest {
        PageRequest {
            cursor: self.cursor,
            limit: self.limit.unwrap_or(DEFAULT_PAGE),
        }
    }
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(super) struct KeyListQuery {
    /// Only this user's keys.
    user_id: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/users", get(list_users).post(create_user))
        .route("/api/v1/users/{id}", get(get_user).patch(update_user))
        .route("/api/v1/keys", get(list_keys).post(create_key))
        .route("/api/v1/keys/{id}", get(get_key))
        .route("/api/v1/keys/{id}/revoke", post(revoke_key))
        .route(
            "/api/v1/providers",
            get(list_providers).post(create_provider),
        )
        .route(
            "/api/v1/providers/{id}",
            get(get_provider).patch(update_provider),
        )
        .route("/api/v1/models", get(list_models).post(create_model))
        .route(
            "/api/v1/models/{id}",
            get(get_model).patch(update_model).delete(delete_model),
        )
        .route("/api/v1/plans", get(list_plans).post(create_plan))
        .route(
            "/api/v1/plans/{id}",
            get(get_plan).patch(update_plan).delete(delete_plan),
        )
        .route("/api/v1/limits", get(get_limits).put(set_limits))
        .route("/api/v1/usage", get(usage))
        .route("/api/v1/audit", get(audit))
        .route("/api/v1/auth/token", post(mint_token))
        .route(
            "/api/v1/admin-tokens",
            get(list_admin_tokens).post(create_admin_token),
        )
        .route("/api/v1/admin-tokens/{id}/revoke", post(revoke_admin_token))
        .route("/api/v1/secrets", get(secrets_status))
        .route("/api/v1/secrets/reencrypt", post(reencrypt_secrets))
}

// === users ===

#[utoipa::path(get, path = "/api/v1/users", tag = "users", params(ListQuery),
    responses((status = 200, body = Page<User>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub(super) async fn list_users(
    State(st): State<AppState>,
    Op(op): Op,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Page<User>>> {
    Ok(Json(st.service.list_users(&op, &q.page()).await?))
}

#[utoipa::path(post, path = "/api/v1/users", tag = "users", request_body = CreateUser,
    responses((status = 201, body = User), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn create_user(
    State(st): State<AppState>,
    Op(op): Op,
    ApiJson(req): ApiJson<CreateUser>,
) -> ApiResult<(StatusCode, Json<User>)> {
    Ok((
        StatusCode::CREATED,
        Json(st.service.create_user(&op, req).await?),
    ))
}

#[utoipa::path(get, path = "/api/v1/users/{id}", tag = "users", params(("id" = String, Path)),
    responses((status = 200, body = User), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn get_user(
    State(st): State<AppState>,
    Op(op): Op,
    Path(id): Path<String>,
) -> ApiResult<Json<User>> {
    Ok(Json(st.service.get_user(&op, &id).await?))
}

#[utoipa::path(patch, path = "/api/v1/users/{id}", tag = "users", params(("id" = String, Path)),
    request_body = UpdateUser,
    responses((status = 200, body = User), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub(super) async fn update_user(
    State(st): State<AppState>,
    Op(op): Op,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<UpdateUser>,
) -> ApiResult<Json<User>> {
    Ok(Json(st.service.update_user(&op, &id, req).await?))
}

// === keys ===

#[utoipa::path(get, path = "/api/v1/keys", tag = "keys", params(KeyListQuery),
    responses((status = 200, body = Page<ApiKey>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub(super) async fn list_keys(
    State(st): State<AppState>,
    Op(op): Op,
    ApiQuery(q): ApiQuery<KeyListQuery>,
) -> ApiResult<Json<Page<ApiKey>>> {
    let page = ListQuery {
        limit: q.limit,
        cursor: q.cursor,
    }
    .page();
    Ok(Json(
        st.service
            .list_keys(&op, q.user_id.as_deref(), &page)
            .await?,
    ))
}

#[utoipa::path(post, path = "/api/v1/keys", tag = "keys", request_body = CreateKey,
    responses((status = 201, description = "The key; `secret` is shown only here", body = CreatedKey),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn create_key(
    State(st): State<AppState>,
    Op(op): Op,
    ApiJson(req): ApiJson<CreateKey>,
) -> ApiResult<(StatusCode, Json<CreatedKey>)> {
    Ok((
        StatusCode::CREATED,
        Json(st.service.create_key(&op, req).await?),
    ))
}

#[utoipa::path(get, path = "/api/v1/keys/{id}", tag = "keys", params(("id" = String, Path)),
    responses((status = 200, body = ApiKey), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn get_key(
    State(st): State<AppState>,
    Op(op): Op,
    Path(id): Path<String>,
) -> ApiResult<Json<ApiKey>> {
    Ok(Json(st.service.get_key(&op, &id).await?))
}

#[utoipa::path(post, path = "/api/v1/keys/{id}/revoke", tag = "keys", params(("id" = String, Path)),
    responses((status = 200, body = ApiKey), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn revoke_key(
    State(st): State<AppState>,
    Op(op): Op,
    Path(id): Path<String>,
) -> ApiResult<Json<ApiKey>> {
    Ok(Json(st.service.revoke_key(&op, &id).await?))
}

// === providers ===

#[utoipa::path(get, path = "/api/v1/providers", tag = "providers", params(ListQuery),
    responses((status = 200, body = Page<Provider>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub(super) async fn list_providers(
    State(st): State<AppState>,
    Op(op): Op,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Page<Provider>>> {
    Ok(Json(st.service.list_providers(&op, &q.page()).await?))
}

#[utoipa::path(post, path = "/api/v1/providers", tag = "providers", request_body = CreateProvider,
    responses((status = 201, description = "The provider, without its master keys", body = Provider),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn create_provider(
    State(st): State<AppState>,
    Op(op): Op,
    ApiJson(req): ApiJson<CreateProvider>,
) -> ApiResult<(StatusCode, Json<Provider>)> {
    Ok((
        StatusCode::CREATED,
        Json(st.service.create_provider(&op, req).await?),
    ))
}

#[utoipa::path(get, path = "/api/v1/providers/{id}", tag = "providers",
    params(("id" = String, Path, description = "Id or name")),
    responses((status = 200, body = Provider), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn get_provider(
    State(st): State<AppState>,
    Op(op): Op,
    Path(id): Path<String>,
) -> ApiResult<Json<Provider>> {
    Ok(Json(st.service.get_provider(&op, &id).await?))
}

#[utoipa::path(patch, path = "/api/v1/providers/{id}", tag = "providers",
    params(("id" = String, Path, description = "Id or name")), request_body = UpdateProvider,
    responses((status = 200, body = Provider), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn update_provider(
    State(st): State<AppState>,
    Op(op): Op,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<UpdateProvider>,
) -> ApiResult<Json<Provider>> {
    Ok(Json(st.service.update_provider(&op, &id, req).await?))
}

// === models ===

#[utoipa::path(get, path = "/api/v1/models", tag = "models", params(ListQuery),
    responses((status = 200, body = Page<PricedModel>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub(super) async fn list_models(
    State(st): State<AppState>,
    Op(op): Op,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Page<PricedModel>>> {
    Ok(Json(st.service.list_models(&op, &q.page()).await?))
}

#[utoipa::path(post, path = "/api/v1/models", tag = "models", request_body = CreateModel,
    responses((status = 201, body = PricedModel), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn create_model(
    State(st): State<AppState>,
    Op(op): Op,
    ApiJson(req): ApiJson<CreateModel>,
) -> ApiResult<(StatusCode, Json<PricedModel>)> {
    Ok((
        StatusCode::CREATED,
        Json(st.service.create_model(&op, req).await?),
    ))
}

#[utoipa::path(get, path = "/api/v1/models/{id}", tag = "models",
    params(("id" = String, Path, description = "Id or name")),
    responses((status = 200, body = PricedModel), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn get_model(
    State(st): State<AppState>,
    Op(op): Op,
    Path(id): Path<String>,
) -> ApiResult<Json<PricedModel>> {
    Ok(Json(st.service.get_model(&op, &id).await?))
}

#[utoipa::path(patch, path = "/api/v1/models/{id}", tag = "models",
    params(("id" = String, Path, description = "Id or name")), request_body = UpdateModel,
    responses((status = 200, body = PricedModel), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn update_model(
    State(st): State<AppState>,
    Op(op): Op,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<UpdateModel>,
) -> ApiResult<Json<PricedModel>> {
    Ok(Json(st.service.update_model(&op, &id, req).await?))
}

#[utoipa::path(delete, path = "/api/v1/models/{id}", tag = "models",
    params(("id" = String, Path, description = "Id or name")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn delete_model(
    State(st): State<AppState>,
    Op(op): Op,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    st.service.delete_model(&op, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// === plans ===

#[utoipa::path(get, path = "/api/v1/plans", tag = "plans", params(ListQuery),
    responses((status = 200, body = Page<Plan>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub(super) async fn list_plans(
    State(st): State<AppState>,
    Op(op): Op,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Page<Plan>>> {
    Ok(Json(st.service.list_plans(&op, &q.page()).await?))
}

#[utoipa::path(post, path = "/api/v1/plans", tag = "plans", request_body = CreatePlan,
    responses((status = 201, body = Plan), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, description = "A plan with this name exists", body = ErrorBody),
        (status = 422, description = "Invalid name or limits; the message names each field path", body = ErrorBody)))]
pub(super) async fn create_plan(
    State(st): State<AppState>,
    Op(op): Op,
    ApiJson(req): ApiJson<CreatePlan>,
) -> ApiResult<(StatusCode, Json<Plan>)> {
    Ok((
        StatusCode::CREATED,
        Json(st.service.create_plan(&op, req).await?),
    ))
}

#[utoipa::path(get, path = "/api/v1/plans/{id}", tag = "plans",
    params(("id" = String, Path, description = "Id or name")),
    responses((status = 200, body = Plan), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn get_plan(
    State(st): State<AppState>,
    Op(op): Op,
    Path(id): Path<String>,
) -> ApiResult<Json<Plan>> {
    Ok(Json(st.service.get_plan(&op, &id).await?))
}

#[utoipa::path(patch, path = "/api/v1/plans/{id}", tag = "plans",
    params(("id" = String, Path, description = "Id or name")), request_body = UpdatePlan,
    responses((status = 200, body = Plan), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, description = "Invalid limits; the message names each field path", body = ErrorBody)))]
pub(super) async fn update_plan(
    State(st): State<AppState>,
    Op(op): Op,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<UpdatePlan>,
) -> ApiResult<Json<Plan>> {
    Ok(Json(st.service.update_plan(&op, &id, req).await?))
}

#[utoipa::path(delete, path = "/api/v1/plans/{id}", tag = "plans",
    params(("id" = String, Path, description = "Id or name")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, description = "Users are on the plan", body = ErrorBody)))]
pub(super) async fn delete_plan(
    State(st): State<AppState>,
    Op(op): Op,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    st.service.delete_plan(&op, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// === limits ===

#[utoipa::path(get, path = "/api/v1/limits", tag = "limits",
    responses((status = 200, body = LimitsDocument), (status = 401, body = ErrorBody)))]
pub(super) async fn get_limits(
    State(st): State<AppState>,
    Op(op): Op,
) -> ApiResult<Json<LimitsDocument>> {
    Ok(Json(st.service.get_limits(&op).await?))
}

#[utoipa::path(put, path = "/api/v1/limits", tag = "limits", request_body = LimitsDocument,
    responses((status = 200, body = LimitsDocument), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 422, description = "Invalid limits; the message names each field path", body = ErrorBody)))]
pub(super) async fn set_limits(
    State(st): State<AppState>,
    Op(op): Op,
    ApiJson(req): ApiJson<LimitsDocument>,
) -> ApiResult<Json<LimitsDocument>> {
    Ok(Json(st.service.set_limits(&op, req).await?))
}

// === usage, audit ===

#[utoipa::path(get, path = "/api/v1/usage", tag = "usage", params(UsageQuery),
    responses((status = 200, body = UsageReport), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub(super) async fn usage(
    State(st): State<AppState>,
    Op(op): Op,
    ApiQuery(q): ApiQuery<UsageQuery>,
) -> ApiResult<Json<UsageReport>> {
    Ok(Json(st.service.usage_report(&op, q).await?))
}

#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", params(ListQuery),
    responses((status = 200, description = "Newest first", body = Page<AuditEntry>),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub(super) async fn audit(
    State(st): State<AppState>,
    Op(op): Op,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Page<AuditEntry>>> {
    Ok(Json(st.service.list_audit(&op, &q.page()).await?))
}

// === auth ===

#[utoipa::path(post, path = "/api/v1/auth/token", tag = "auth", request_body = MintToken,
    responses((status = 200, body = MintedToken), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub(super) async fn mint_token(
    State(st): State<AppState>,
    Op(op): Op,
    ApiJson(req): ApiJson<MintToken>,
) -> ApiResult<Json<MintedToken>> {
    Ok(Json(st.service.mint_client_token(&op, req).await?))
}

#[utoipa::path(get, path = "/api/v1/admin-tokens", tag = "auth", params(ListQuery),
    responses((status = 200, body = Page<AdminToken>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub(super) async fn list_admin_tokens(
    State(st): State<AppState>,
    Op(op): Op,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Page<AdminToken>>> {
    Ok(Json(st.service.list_admin_tokens(&op, &q.page()).await?))
}

#[utoipa::path(post, path = "/api/v1/admin-tokens", tag = "auth", request_body = CreateAdminToken,
    responses((status = 201, description = "The token; `secret` is shown only here", body = CreatedAdminToken),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub(super) async fn create_admin_token(
    State(st): State<AppState>,
    Op(op): Op,
    ApiJson(req): ApiJson<CreateAdminToken>,
) -> ApiResult<(StatusCode, Json<CreatedAdminToken>)> {
    Ok((
        StatusCode::CREATED,
        Json(st.service.create_admin_token(&op, req).await?),
    ))
}

#[utoipa::path(post, path = "/api/v1/admin-tokens/{id}/revoke", tag = "auth", params(("id" = String, Path)),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub(super) async fn revoke_admin_token(
    State(st): State<AppState>,
    Op(op): Op,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    st.service.revoke_admin_token(&op, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// === secrets at rest ===

#[utoipa::path(get, path = "/api/v1/secrets", tag = "secrets",
    responses((status = 200, description = "Which at-rest key each sealed value is under", body = SecretsStatus),
        (status = 401, body = ErrorBody)))]
pub(super) async fn secrets_status(
    State(st): State<AppState>,
    Op(op): Op,
) -> ApiResult<Json<SecretsStatus>> {
    Ok(Json(st.service.secrets_status(&op).await?))
}

/// Rewrite every sealed value not under the current at-rest key with it,
/// while serving (each value in its own small write, only if unchanged).
/// Idempotent; run again until `status.stale` is 0, then drop the previous
/// keys. Admin only; audited as `secrets.reencrypt`.
#[utoipa::path(post, path = "/api/v1/secrets/reencrypt", tag = "secrets",
    responses((status = 200, body = ReencryptReport), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
pub(super) async fn reencrypt_secrets(
    State(st): State<AppState>,
    Op(op): Op,
) -> ApiResult<Json<ReencryptReport>> {
    Ok(Json(st.service.reencrypt_secrets(&op).await?))
}
