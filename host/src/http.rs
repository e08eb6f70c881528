//! The HTTP endpoint: `GET /metrics` (Prometheus text) and `GET /health`
//! (JSON, 503 when degraded).
//!
//! Owns the listening socket and the two handlers. It only reads: metrics
//! from the Prometheus handle, health from the [`Health`] registry. It binds
//! where the manifest says (`http = "127.0.0.1:9464"` by default: loopback,
//! so nothing is exposed to the network unless asked for) and never serves
//! anything else.

use std::future::Future;
use std::net::SocketAddr;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::task::JoinHandle;

use crate::health::{Health, Status};

/// The address served when the manifest does not name one.
pub const DEFAULT_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9464);

/// The content type of the Prometheus text format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone)]
struct AppState {
    metrics: PrometheusHandle,
    health: Health,
}

/// Binds `addr` and serves `/metrics` and `/health` until `shutdown`
/// completes. Returns the bound address (port 0 resolved) and the server
/// task, which ends after `shutdown` once in-flight requests are answered.
///
/// # Errors
///
/// When `addr` cannot be bound.
pub async fn serve(
    addr: SocketAddr,
    metrics: PrometheusHandle,
    health: Health,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(SocketAddr, JoinHandle<anyhow::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("http endpoint: bind {addr}"))?;
    let local_addr = listener
        .local_addr()
        .context("http endpoint: local address")?;
    let app = router(AppState { metrics, health });
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .with_context(|| format!("http endpoint on {local_addr}"))
    });
    tracing::info!(addr = %local_addr, "Serving /metrics and /health.");
    Ok((local_addr, task))
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .with_state(state)
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
        state.metrics.render(),
    )
        .into_response()
}

async fn health(State(state): State<AppState>) -> Response {
    let report = state.health.report();
    let status = match report.status {
        Status::Ok => StatusCode::OK,
        // Load balancers and orchestrators read the status code, not the
        // body.
        Status::Degraded => StatusCode::SERVICE_UNAVAILABLE,
    };
    (status, Json(report)).into_response()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::Value;
    use tokio::sync::oneshot;

    use super::*;
    use crate::health::RuleState;

    /// Starts the endpoint on a free loopback port; dropping the sender
    /// stops it.
    async fn start(
        health: Health,
    ) -> (String, oneshot::Sender<()>, JoinHandle<anyhow::Result<()>>) {
        // reqwest is built with `rustls-no-provider` (the Tablestore sink
        // brings ring's): a plain `reqwest::get` needs a default provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (stop, stopped) = oneshot::channel::<()>();
        let (addr, task) = serve(
            "127.0.0.1:0".parse().unwrap(),
            crate::telemetry::install_prometheus(),
            health,
            async move {
                let _ = stopped.await;
            },
        )
        .await
        .unwrap();
        (format!("http://{addr}"), stop, task)
    }

    #[tokio::test]
    async fn metrics_shows_a_counter_recorded_through_the_metrics_facade() {
        let (base, _stop, _task) = start(Health::new()).await;
        metrics::counter!("weir_http_test_total", "case" => "facade").increment(3);
        metrics::histogram!("weir_http_test_seconds").record(0.003);

        let response = reqwest::get(format!("{base}/metrics")).await.unwrap();

        assert_eq!(response.status(), 200);
        assert!(
            response.headers()[header::CONTENT_TYPE.as_str()]
                .to_str()
                .unwrap()
                .starts_with("text/plain")
        );
        let body = response.text().await.unwrap();
        assert!(
            body.contains(r#"weir_http_test_total{case="facade"} 3"#),
            "{body}"
        );
        // A histogram with the latency buckets, not a summary.
        assert!(
            body.contains(r#"weir_http_test_seconds_bucket{le="0.005"} 1"#),
            "{body}"
        );
        assert!(
            body.contains(r#"weir_http_test_seconds_bucket{le="0.0025"} 0"#),
            "{body}"
        );
    }

    #[tokio::test]
    async fn health_reflects_the_registry_and_answers_503_when_degraded() {
        let health = Health::new();
        health.set_rule("avg", RuleState::Running);
        health.sink_ok("tsdb");
        health.set_plugin("threshold", "0.2.0", "c0ffee");
        let (base, _stop, _task) = start(health.clone()).await;

        let response = reqwest::get(format!("{base}/health")).await.unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        assert_eq!(body["status"], "ok");
        assert_eq!(body["rules"]["avg"]["state"], "running");
        assert_eq!(body["sinks"]["tsdb"]["healthy"], true);
        assert_eq!(body["plugins"]["threshold"]["version"], "0.2.0");
        assert_eq!(body["plugins"]["threshold"]["content_hash"], "c0ffee");
        assert!(body["uptime_secs"].is_u64());

        health.sink_failed("tsdb", "connection refused");

        let response = reqwest::get(format!("{base}/health")).await.unwrap();
        assert_eq!(response.status(), 503);
        let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        assert_eq!(body["status"], "degraded");
        assert_eq!(body["sinks"]["tsdb"]["healthy"], false);
        assert_eq!(body["sinks"]["tsdb"]["last_error"], "connection refused");
    }

    #[tokio::test]
    async fn the_server_ends_when_shutdown_completes() {
        let (base, stop, task) = start(Health::new()).await;

        stop.send(()).unwrap();

        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the server ends")
            .unwrap()
            .unwrap();
        assert!(reqwest::get(format!("{base}/health")).await.is_err());
    }

    #[tokio::test]
    async fn an_unknown_path_is_404() {
        let (base, _stop, _task) = start(Health::new()).await;

        let response = reqwest::get(format!("{base}/admin")).await.unwrap();

        assert_eq!(response.status(), 404);
    }
}
