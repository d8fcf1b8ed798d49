//! `/api/v1/bots`: provisioning as the operators see it. Every change
//! answers 202: it is recorded at once and carried out by the provisioning
//! worker; `GET` shows how far it got.

use super::error::{ApiError, ApiJson, ApiQuery, ErrorBody};
use super::{AppState, Op};
use crate::domain::{Page, PageRequest};
use crate::provision::Bot;
use crate::service::bots::{BotAction, CreateBot};
use crate::service::DEFAULT_PAGE;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use utoipa::IntoParams;

type ApiResult<T> = Result<T, ApiError>;

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(super) struct BotListQuery {
    /// Only this user's bots.
    user_id: Option<String>,
    /// 1 to 500, default 50.
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/bots", get(list_bots).post(create_bot))
        .route("/api/v1/bots/{id}", get(get_bot).delete(delete_bot))
        .route("/api/v1/bots/{id}/stop", post(stop_bot))
        .route("/api/v1/bots/{id}/start", post(start_bot))
        .route("/api/v1/bots/{id}/retry", post(retry_bot))
}

#[utoipa::path(get, path = "/api/v1/bots", tag = "bots", params(BotListQuery),
    responses((status = 200, body = Page<Bot>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub(super) async fn list_bots(
    State(st): State<AppState>,
    Op(op): Op,
    ApiQuery(q): ApiQuery<BotListQuery>,
) -> ApiResult<Json<Page<Bot>>> {
    let page = PageRequest {
        cursor: q.cursor,
        limit: q.limit.unwrap_or(DEFAULT_PAGE),
    };
    Ok(Json(
        st.service
            .list_bots(&op, q.user_id.as_deref(), &page)
            .await?,
    ))
}

#[utoipa::path(post, path = "/api/v1/bots", tag = "bots", request_body = CreateBot,
    responses((status = 202, description = "Recorded; provisioning runs in the background", body = Bot),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn create_bot(
    State(st): State<AppState>,
    Op(op): Op,
    ApiJson(req): ApiJson<CreateBot>,
) -> ApiResult<(StatusCode, Json<Bot>)> {
    Ok((
        StatusCode::ACCEPTED,
        Json(st.service.create_bot(&op, req).await?),
    ))
}

#[utoipa::path(get, path = "/api/v1/bots/{id}", tag = "bots", params(("id" = String, Path)),
    responses((status = 200, body = Bot), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn get_bot(
    State(st): State<AppState>,
    Op(op): Op,
    Path(id): Path<String>,
) -> ApiResult<Json<Bot>> {
    Ok(Json(st.service.get_bot(&op, &id).await?))
}

async fn act(
    st: AppState,
    op: Op,
    id: String,
    action: BotAction,
) -> ApiResult<(StatusCode, Json<Bot>)> {
    Ok((
        StatusCode::ACCEPTED,
        Json(st.service.bot_action(&op.0, &id, action).await?),
    ))
}

#[utoipa::path(post, path = "/api/v1/bots/{id}/stop", tag = "bots", params(("id" = String, Path)),
    responses((status = 202, body = Bot), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn stop_bot(
    State(st): State<AppState>,
    op: Op,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Bot>)> {
    act(st, op, id, BotAction::Stop).await
}

#[utoipa::path(post, path = "/api/v1/bots/{id}/start", tag = "bots", params(("id" = String, Path)),
    responses((status = 202, body = Bot), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn start_bot(
    State(st): State<AppState>,
    op: Op,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Bot>)> {
    act(st, op, id, BotAction::Start).await
}

#[utoipa::path(post, path = "/api/v1/bots/{id}/retry", tag = "bots", params(("id" = String, Path)),
    responses((status = 202, description = "Resumed from the failed step", body = Bot),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn retry_bot(
    State(st): State<AppState>,
    op: Op,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Bot>)> {
    act(st, op, id, BotAction::Retry).await
}

#[utoipa::path(delete, path = "/api/v1/bots/{id}", tag = "bots", params(("id" = String, Path)),
    responses((status = 202, description = "Machine and volume are being destroyed", body = Bot),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn delete_bot(
    State(st): State<AppState>,
    op: Op,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Bot>)> {
    act(st, op, id, BotAction::Delete).await
}
