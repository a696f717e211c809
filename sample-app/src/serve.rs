//! `sample-app serve`: the HTTP API on a local port, with a relay and
//! workers on the in-process queue behind it.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::db::AppDb;
use crate::pipeline::{WorkTiming, local_pipeline};
use crate::table::checked_table;

/// Serves until Ctrl-C or SIGTERM.
pub(crate) async fn serve<S: AppDb>(store: S, addr: SocketAddr) -> anyhow::Result<()> {
    let table = checked_table()?;
    store.migrate().await?;
    store.migrate_app().await?;
    let running = local_pipeline(store.clone(), table, WorkTiming::default());
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|err| anyhow::anyhow!("cannot listen on {addr}: {err}"))?;
    println!("listening on http://{}", listener.local_addr()?);
    let app = crate::api::router(store, Arc::new(running.waker().clone()));
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await;
    let report = running.shutdown().await;
    tracing::info!(?report, "stopped");
    served?;
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
