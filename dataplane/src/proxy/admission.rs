//! Admission: everything decided before an upstream is contacted. The
//! route's method, the client's credential, the body (read whole and
//! validated), the model (alias, allowlist, fallbacks) and the limits, in
//! that order; the first that fails answers the request. What passes is one
//! [`Admitted`] value the exchange and the relay work from.
//!
//! Architecture invariant (see ARCHITECTURE.md): nothing reaches an
//! upstream for a request that fails here.

use super::body::{BodyLimits, RequestBody};
use super::ctx::RequestCtx;
use super::headers::client_credential;
use super::route::Route;
use super::MoltProxy;
use crate::auth::Principal;
use crate::error::ClientError;
use crate::limits::{self, AdmissionRequest, LimitKind};
use crate::runtime::Runtime;
use crate::scrub::Secrets;
use crate::splice::Edit;
use molt_config::Model;
use pingora_proxy::Session;
use std::time::Instant;

/// A request admitted to go upstream.
pub(super) struct Admitted<'rt> {
    pub(super) route: Route,
    pub(super) body: RequestBody,
    /// When the body was read in full (the proxy's own overhead is
    /// measured from here to the upstream request and back).
    pub(super) body_read_at: Instant,
    /// The resolved model, then its fallbacks the caller may use.
    pub(super) candidates: Vec<&'rt Model>,
    /// The edit that asks an OpenAI stream for its usage.
    pub(super) usage_edit: Option<Edit>,
    /// The client did not ask for the usage chunk: cut it out of the stream.
    pub(super) strip_usage_chunk: bool,
    /// Secrets to mask in the answer ([`crate::scrub`]).
    pub(super) secrets: &'rt Secrets,
}

/// What admission came to, short of a refusal.
// Made once per request and moved once; boxing the large variant would add
// an allocation to every model request to save a few hundred bytes of stack.
#[allow(clippy::large_enum_variant)]
pub(super) enum Admit<'rt> {
    /// Go upstream.
    Proxy(Admitted<'rt>),
    /// `GET /v1/models`: answered locally for this caller.
    ListModels(Principal),
}

impl MoltProxy {
    /// Decide whether `route`'s request goes upstream, filling in the
    /// caller, the model and the limiter's reservation in `ctx`.
    pub(super) async fn admit<'rt>(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        rt: &'rt Runtime,
        route: Route,
    ) -> Result<Admit<'rt>, ClientError> {
        if session.req_header().method != route.method() {
            return Err(ClientError::MethodNotAllowed);
        }
        let credential = client_credential(session.req_header(), route.format());
        let principal = rt
            .auth
            .authenticate(credential, |n| rt.model(n).map(|m| m.name.clone()))
            .map_err(ClientError::Auth)?;
        ctx.caller = Some(principal.clone());
        if route == Route::Models {
            return Ok(Admit::ListModels(principal));
        }

        let limits = BodyLimits {
            max_bytes: rt.config.server.max_body_bytes,
            timeout: rt.config.server.client_body_timeout,
        };
        let body = RequestBody::read(session, limits).await?;
        let body_read_at = Instant::now();
        let requested = body.model().ok_or(ClientError::MissingModel)?;
        let Some(model) = rt.model(&requested) else {
            return Err(ClientError::UnknownModel(requested));
        };
        ctx.usage.model = Some(model.name.clone());
        if !principal.may_use(&model.name) {
            return Err(ClientError::ModelNotAllowed(requested));
        }
        ctx.usage.stream = body.stream();
        self.take_limits(ctx, rt, &principal, model, &body)?;

        let (usage_edit, strip_usage_chunk) = if ctx.usage.stream && route.needs_include_usage() {
            body.include_usage_edit()
        } else {
            (None, false)
        };
        // The model and its fallbacks, in order; fallbacks the key may not
        // use are skipped.
        let candidates = std::iter::once(model)
            .chain(model.fallbacks.iter().filter_map(|f| rt.model(f)))
            .filter(|m| principal.may_use(&m.name))
            .collect();
        Ok(Admit::Proxy(Admitted {
            route,
            body,
            body_read_at,
            candidates,
            usage_edit,
            strip_usage_chunk,
            secrets: &rt.secrets,
        }))
    }

    /// Reserve one request and an estimate of its tokens and cost (at the
    /// model's price) with the limiter.
    fn take_limits(
        &self,
        ctx: &mut RequestCtx,
        rt: &Runtime,
        principal: &Principal,
        model: &Model,
        body: &RequestBody,
    ) -> Result<(), ClientError> {
        let admitted = self.limiter.admit(&AdmissionRequest {
            user: &principal.user,
            key_id: &principal.key_id,
            model: &model.name,
            provider: &rt.config.providers[model.provider].name,
            estimated_input_tokens: limits::estimate_input_tokens(body.len()),
            max_output_tokens: body.max_output_tokens(),
            stream: ctx.usage.stream,
            price: model.price.as_ref(),
        });
        match admitted {
            Ok(admission) => {
                ctx.limits.headers = Some(admission.headers().clone());
                ctx.limits.admission = Some(Box::new(admission));
                Ok(())
            }
            Err(rejection) if rejection.kind == LimitKind::UnpricedModel => {
                // Not a wait: no retry-after.
                Err(ClientError::ModelNotPriced(model.name.clone()))
            }
            Err(rejection) => {
                ctx.limits.headers = Some(rejection.headers.clone());
                // Whole seconds, rounded up, never 0: "retry now" would
                // just be refused again.
                ctx.limits.retry_after =
                    Some(rejection.retry_after.as_secs_f64().ceil().max(1.0) as u64);
                ctx.usage.anomaly = rejection.kind == LimitKind::Anomaly;
                if rejection.kind == LimitKind::MonthlyDollarBudget {
                    return Err(ClientError::BudgetExceeded(rejection.reason));
                }
                let tokens = matches!(
                    rejection.kind,
                    LimitKind::TokensPerMinute
                        | LimitKind::TokensPerDay
                        | LimitKind::MonthlyBudget
                        | LimitKind::ProviderTokens
                );
                Err(ClientError::RateLimited {
                    reason: rejection.reason,
                    tokens,
                })
            }
        }
    }
}
