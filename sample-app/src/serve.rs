//! `sample-app serve`: the HTTP API on a local port, with a relay and
//! workers on the in-process queue behind it, and the toolkit's metrics in
//! Prometheus's text format at `GET /metrics`.

use std::net::SocketAddr;
use std::sync::Arc;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::db::AppDb;
use crate::pipeline::{WorkTiming, local_pipeline};
use crate::table::checked_table;

/// Serves until Ctrl-C or SIGTERM.
pub(crate) async fn serve<S: AppDb>(store: S, addr: SocketAddr) -> anyhow::Result<()> {
    let table = checked_table()?;
    store.migrate().await?;
    store.migrate_app().await?;
    let stop = shutdown_signal()?;
    // Before the pipeline starts, so that its first updates are recorded.
    let prometheus = prometheus()?;
    let running = local_pipeline(store.clone(), table, WorkTiming::default());
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|err| anyhow::anyhow!("cannot listen on {addr}: {err}"))?;
    println!("listening on http://{}", listener.local_addr()?);
    let app = crate::api::router(store, Arc::new(running.waker().clone())).route(
        "/metrics",
        axum::routing::get(move || std::future::ready(prometheus.render())),
    );
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await;
    let report = running.shutdown().await;
    tracing::info!(?report, "stopped");
    served?;
    Ok(())
}

/// Installs the Prometheus recorder the toolkit's metrics go to
/// (`outbox_runtime::metrics`), with histogram buckets from 1 ms to 30 s.
fn prometheus() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets(&[
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ])?
        .install_recorder()?;
    outbox_runtime::metrics::describe();
    // Histogram samples are folded in by upkeep, which render also runs.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// Ctrl-C or SIGTERM.
/// The handlers are installed when this is called, so a signal that comes
/// before the future is first polled is not missed. A second signal, while
/// the first one's clean shutdown runs, ends the process at once.
pub(crate) fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = term.recv() => {}
        }
        tokio::spawn(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = term.recv() => {}
            }
            eprintln!("second signal: exiting without a clean shutdown");
            std::process::exit(130);
        });
    })
}
