//! The HTTP API: one axum router, served on a local port by `sample-app
//! serve` and behind a Lambda function URL by `lambda_http` (role `api`).
//!
//! | route | does |
//! |---|---|
//! | `POST /orders` `{"customer_id": "c-1"}` | creates an order (201, `Location`) |
//! | `GET /orders/{id}` | the order and the status history its handler recorded |
//! | `POST /orders/{id}/submit` | submits it (409 if it is not `created`) |
//! | `GET /outbox?status=dead&limit=50` | outbox counts and the newest rows |
//! | `GET /health` | 200 when the database answers, 503 otherwise |
//!
//! Every error is an RFC 9457 problem (`application/problem+json`) with the
//! status a client can act on: 400 for a malformed request, 404 for an
//! unknown order or route, 405, 409 for an invalid transition, 413, 415;
//! 500 and 503 only for the server's own failures, whose details go to the
//! log, not to the client.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use outbox_runtime::{pump::Pump, store::RowStatus};

use crate::db::{AppDb, OrderView};
use crate::domain::{CustomerId, DomainError};
use crate::orders::{self, OrderError};

/// The largest request body accepted.
pub(crate) const MAX_BODY_BYTES: usize = 16 * 1024;
/// The most rows `GET /outbox` returns.
pub(crate) const MAX_OUTBOX_ROWS: u32 = 500;

struct Api<S> {
    store: S,
    pump: Arc<dyn Pump>,
}

impl<S: Clone> Clone for Api<S> {
    fn clone(&self) -> Self {
        Api {
            store: self.store.clone(),
            pump: Arc::clone(&self.pump),
        }
    }
}

/// The app's routes on `store`; `pump` is woken after each commit.
pub(crate) fn router<S: AppDb>(store: S, pump: Arc<dyn Pump>) -> Router {
    Router::new()
        .route("/orders", post(create_order::<S>))
        .route("/orders/{id}", get(get_order::<S>))
        .route("/orders/{id}/submit", post(submit_order::<S>))
        .route("/outbox", get(outbox::<S>))
        .route("/health", get(health::<S>))
        .fallback(|| async { Problem::new(StatusCode::NOT_FOUND, "no such route") })
        .method_not_allowed_fallback(|| async {
            Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "this route does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(Api { store, pump })
}

/// An RFC 9457 problem response.
#[derive(Debug)]
pub(crate) struct Problem {
    status: StatusCode,
    kind: &'static str,
    detail: String,
}

impl Problem {
    fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Problem {
            status,
            kind: "about:blank",
            detail: detail.into(),
        }
    }

    fn of_kind(status: StatusCode, kind: &'static str, detail: impl Into<String>) -> Self {
        Problem {
            kind,
            ..Problem::new(status, detail)
        }
    }

    /// A failure of the server itself: logged in full, reported without
    /// internals.
    fn internal(err: &anyhow::Error) -> Self {
        tracing::error!(error = %err, "request failed");
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the server failed; the error is in its log",
        )
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "type": self.kind,
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        (
            self.status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body.to_string(),
        )
            .into_response()
    }
}

impl From<OrderError> for Problem {
    fn from(err: OrderError) -> Self {
        match err {
            OrderError::NotFound(_) => Problem::of_kind(
                StatusCode::NOT_FOUND,
                "/problems/order-not-found",
                err.to_string(),
            ),
            OrderError::Domain(DomainError::InvalidTransition { .. }) => Problem::of_kind(
                StatusCode::CONFLICT,
                "/problems/invalid-transition",
                err.to_string(),
            ),
            OrderError::Domain(DomainError::InvalidCustomerId(_)) => Problem::of_kind(
                StatusCode::BAD_REQUEST,
                "/problems/invalid-customer-id",
                err.to_string(),
            ),
            OrderError::Internal(err) => Problem::internal(&err),
        }
    }
}

impl From<JsonRejection> for Problem {
    fn from(rejection: JsonRejection) -> Self {
        // axum answers 422 for JSON of the wrong shape; to the client it is
        // as malformed as a syntax error.
        let status = match rejection.status() {
            StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
            other => other,
        };
        Problem::new(status, rejection.body_text())
    }
}

impl From<PathRejection> for Problem {
    fn from(rejection: PathRejection) -> Self {
        Problem::new(
            StatusCode::BAD_REQUEST,
            format!(
                "the order id must be a whole number: {}",
                rejection.body_text()
            ),
        )
    }
}

impl From<QueryRejection> for Problem {
    fn from(rejection: QueryRejection) -> Self {
        Problem::new(StatusCode::BAD_REQUEST, rejection.body_text())
    }
}

/// `POST /orders`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewOrder {
    customer_id: String,
}

async fn create_order<S: AppDb>(
    State(api): State<Api<S>>,
    body: Result<Json<NewOrder>, JsonRejection>,
) -> Result<Response, Problem> {
    let Json(new) = body?;
    let customer = CustomerId::parse(&new.customer_id).map_err(OrderError::from)?;
    let id = orders::create(&api.store, api.pump.as_ref(), &customer)
        .await
        .map_err(OrderError::Internal)?;
    let view = order_view(&api.store, id).await?;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/orders/{id}"))],
        Json(view),
    )
        .into_response())
}

/// The order and its history, or a 404 problem.
async fn order_view<S: AppDb>(store: &S, id: i64) -> Result<OrderView, OrderError> {
    store
        .order_view(id)
        .await
        .map_err(OrderError::Internal)?
        .ok_or(OrderError::NotFound(id))
}

async fn get_order<S: AppDb>(
    State(api): State<Api<S>>,
    id: Result<Path<i64>, PathRejection>,
) -> Result<Response, Problem> {
    let Path(id) = id?;
    let view = order_view(&api.store, id).await?;
    Ok(Json(view).into_response())
}

async fn submit_order<S: AppDb>(
    State(api): State<Api<S>>,
    id: Result<Path<i64>, PathRejection>,
) -> Result<Response, Problem> {
    let Path(id) = id?;
    orders::submit(&api.store, api.pump.as_ref(), id).await?;
    let view = order_view(&api.store, id).await?;
    Ok(Json(view).into_response())
}

/// `GET /outbox` query.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct OutboxQuery {
    status: Option<RowStatus>,
    limit: Option<u32>,
}

async fn outbox<S: AppDb>(
    State(api): State<Api<S>>,
    query: Result<Query<OutboxQuery>, QueryRejection>,
) -> Result<Response, Problem> {
    let Query(query) = query?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=MAX_OUTBOX_ROWS).contains(&limit) {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            format!("limit must be from 1 to {MAX_OUTBOX_ROWS}, not {limit}"),
        ));
    }
    let internal = |err: outbox_runtime::store::StoreError| Problem::internal(&err.into());
    let stats = api.store.stats().await.map_err(internal)?;
    let rows = api
        .store
        .rows(query.status, limit)
        .await
        .map_err(internal)?;
    Ok(Json(serde_json::json!({ "stats": stats, "rows": rows })).into_response())
}

async fn health<S: AppDb>(State(api): State<Api<S>>) -> Result<Response, Problem> {
    // One round trip that reads no table: cheap however large the outbox is.
    match api.store.ping().await {
        Ok(_) => Ok(Json(serde_json::json!({ "status": "ok" })).into_response()),
        Err(err) => {
            tracing::warn!(error = %err, "health check: the database does not answer");
            Err(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the database does not answer",
            ))
        }
    }
}
