//! The app's use cases: each one transaction with its outbox messages,
//! committed, then pumped.

use outbox_runtime::{StoreExt, commit_and_pump, pump::Pump};

use crate::db::AppDb;
use crate::domain::{CustomerId, DomainError, OrderStatus};
use crate::messages::OrderStatusChanged;

/// Why a use case failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OrderError {
    /// No such order.
    #[error("order {0} does not exist")]
    NotFound(i64),
    /// A domain rule refused it.
    #[error(transparent)]
    Domain(#[from] DomainError),
    /// The database or the outbox failed.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// Creates an order: the row and its `created` message in one transaction,
/// committed, then pumped. Returns its id.
pub(crate) async fn create<S: AppDb>(
    store: &S,
    pump: &dyn Pump,
    customer_id: &CustomerId,
) -> anyhow::Result<i64> {
    let mut tx = store.begin().await?;
    let order_id = store.insert_order(&mut tx, customer_id.as_str()).await?;
    let message = OrderStatusChanged {
        order_id,
        status: OrderStatus::Created,
        customer_id: customer_id.as_str().to_owned(),
    };
    store.enqueue(&mut tx, &message).await?;
    commit_and_pump(tx, pump).await?;
    Ok(order_id)
}

/// Submits an order: status and outbox row in one transaction.
pub(crate) async fn submit<S: AppDb>(
    store: &S,
    pump: &dyn Pump,
    order_id: i64,
) -> Result<(), OrderError> {
    let mut tx = store.begin().await.map_err(anyhow::Error::from)?;
    let order = store
        .order(&mut tx, order_id)
        .await?
        .ok_or(OrderError::NotFound(order_id))?;
    let status = order.status.submit()?;
    store.set_status(&mut tx, order_id, status).await?;
    store
        .enqueue(
            &mut tx,
            &OrderStatusChanged {
                order_id,
                status,
                customer_id: order.customer_id,
            },
        )
        .await
        .map_err(anyhow::Error::from)?;
    commit_and_pump(tx, pump)
        .await
        .map_err(anyhow::Error::from)?;
    Ok(())
}
