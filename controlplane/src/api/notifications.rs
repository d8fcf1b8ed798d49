//! Notifications over HTTP: a user's in-app entries
//! (`/api/v1/users/{id}/notifications`), replays of a notification's
//! webhooks, and the operator's webhook endpoints.

use super::error::{ApiError, ApiJson, ApiQuery, ErrorBody};
use super::{AppState, Op};
use crate::domain::{Notification, Page, PageRequest, WebhookEndpoint};
use crate::service::notifications::{CreateWebhookEndpoint, CreatedWebhookEndpoint};
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
pub(super) struct NotificationQuery {
    /// Only unread notifications.
    #[serde(default)]
    unread: bool,
    /// 1 to 500, default 50.
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(super) struct EndpointListQuery {
    /// 1 to 500, default 50.
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/users/{id}/notifications", get(list_notifications))
        .route(
            "/api/v1/users/{id}/notifications/{notification}/read",
            post(read_notification),
        )
        .route(
            "/api/v1/notifications/{id}/replay",
            post(replay_notification),
        )
        .route(
            "/api/v1/webhook-endpoints",
            get(list_webhook_endpoints).post(create_webhook_endpoint),
        )
        .route(
            "/api/v1/webhook-endpoints/{id}",
            axum::routing::delete(disable_webhook_endpoint),
        )
}

#[utoipa::path(get, path = "/api/v1/users/{id}/notifications", tag = "notifications",
    params(("id" = String, Path), NotificationQuery),
    responses((status = 200, description = "Newest first, each with its deliveries", body = Page<Notification>),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn list_notifications(
    State(st): State<AppState>,
    Op(op): Op,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<NotificationQuery>,
) -> ApiResult<Json<Page<Notification>>> {
    let page = PageRequest {
        cursor: q.cursor,
        limit: q.limit.unwrap_or(DEFAULT_PAGE),
    };
    Ok(Json(
        st.service
            .list_notifications(&op, &id, q.unread, &page)
            .await?,
    ))
}

#[utoipa::path(post, path = "/api/v1/users/{id}/notifications/{notification}/read", tag = "notifications",
    params(("id" = String, Path), ("notification" = String, Path)),
    responses((status = 200, body = Notification), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn read_notification(
    State(st): State<AppState>,
    Op(op): Op,
    Path((user, id)): Path<(String, String)>,
) -> ApiResult<Json<Notification>> {
    Ok(Json(st.service.read_notification(&op, &user, &id).await?))
}

#[utoipa::path(post, path = "/api/v1/notifications/{id}/replay", tag = "notifications",
    params(("id" = String, Path)),
    responses((status = 202, description = "Its webhook deliveries are pending again (same webhook-id)", body = Notification),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn replay_notification(
    State(st): State<AppState>,
    Op(op): Op,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Notification>)> {
    Ok((
        StatusCode::ACCEPTED,
        Json(st.service.replay_notification(&op, &id).await?),
    ))
}

#[utoipa::path(get, path = "/api/v1/webhook-endpoints", tag = "notifications", params(EndpointListQuery),
    responses((status = 200, body = Page<WebhookEndpoint>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub(super) async fn list_webhook_endpoints(
    State(st): State<AppState>,
    Op(op): Op,
    ApiQuery(q): ApiQuery<EndpointListQuery>,
) -> ApiResult<Json<Page<WebhookEndpoint>>> {
    let page = PageRequest {
        cursor: q.cursor,
        limit: q.limit.unwrap_or(DEFAULT_PAGE),
    };
    Ok(Json(st.service.list_webhook_endpoints(&op, &page).await?))
}

#[utoipa::path(post, path = "/api/v1/webhook-endpoints", tag = "notifications", request_body = CreateWebhookEndpoint,
    responses((status = 201, description = "The secret is shown only here", body = CreatedWebhookEndpoint),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub(super) async fn create_webhook_endpoint(
    State(st): State<AppState>,
    Op(op): Op,
    ApiJson(req): ApiJson<CreateWebhookEndpoint>,
) -> ApiResult<(StatusCode, Json<CreatedWebhookEndpoint>)> {
    Ok((
        StatusCode::CREATED,
        Json(st.service.create_webhook_endpoint(&op, req).await?),
    ))
}

#[utoipa::path(delete, path = "/api/v1/webhook-endpoints/{id}", tag = "notifications",
    params(("id" = String, Path)),
    responses((status = 200, description = "Disabled: nothing more is sent to it", body = WebhookEndpoint),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn disable_webhook_endpoint(
    State(st): State<AppState>,
    Op(op): Op,
    Path(id): Path<String>,
) -> ApiResult<Json<WebhookEndpoint>> {
    Ok(Json(st.service.disable_webhook_endpoint(&op, &id).await?))
}
