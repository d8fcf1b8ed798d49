//! `/api/v1` handlers for money: a model's price versions (set one, read
//! the history) and a user's month against their dollar budget. The usage
//! report with its costs is `v1.rs`'s `/api/v1/usage`.

use super::error::{ApiError, ApiJson, ApiQuery, ErrorBody};
use super::{AppState, Op};
use crate::domain::PriceVersion;
use crate::service::budget::{BudgetQuery, UserBudget};
use crate::service::prices::SetPrice;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};

type ApiResult<T> = Result<T, ApiError>;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/models/{id}/price", axum::routing::put(set_price))
        .route("/api/v1/models/{id}/prices", get(price_history))
        .route("/api/v1/users/{id}/budget", get(user_budget))
}

#[utoipa::path(put, path = "/api/v1/models/{id}/price", tag = "models",
    params(("id" = String, Path, description = "Id or name")), request_body = SetPrice,
    responses((status = 201, description = "The new version; earlier ones and the costs they fixed stay", body = PriceVersion),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 422, description = "An invalid price (the message names each field path) or a time in the past", body = ErrorBody)))]
pub(super) async fn set_price(
    State(st): State<AppState>,
    Op(op): Op,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<SetPrice>,
) -> ApiResult<(StatusCode, Json<PriceVersion>)> {
    Ok((
        StatusCode::CREATED,
        Json(st.service.set_price(&op, &id, req).await?),
    ))
}

#[utoipa::path(get, path = "/api/v1/models/{id}/prices", tag = "models",
    params(("id" = String, Path, description = "Id or name")),
    responses((status = 200, description = "Every version, oldest first", body = Vec<PriceVersion>),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn price_history(
    State(st): State<AppState>,
    Op(op): Op,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<PriceVersion>>> {
    Ok(Json(st.service.price_history(&op, &id).await?))
}

#[utoipa::path(get, path = "/api/v1/users/{id}/budget", tag = "users",
    params(("id" = String, Path), BudgetQuery),
    responses((status = 200, body = UserBudget), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn user_budget(
    State(st): State<AppState>,
    Op(op): Op,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<BudgetQuery>,
) -> ApiResult<Json<UserBudget>> {
    Ok(Json(st.service.user_budget(&op, &id, q).await?))
}
