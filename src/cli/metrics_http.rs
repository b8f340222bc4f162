//! The Prometheus endpoint of `serve`: installs the exporter's recorder
//! behind the `metrics` facade and answers `GET /metrics` on its own
//! listener (loopback by default). The caller binds the listener, so port 0
//! works and the bound address can be printed.

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// Scrapes served at once; more wait for a slot. Prometheus scrapes one
/// at a time per target, so this only bounds misbehaving clients.
const MAX_CONNECTIONS: usize = 16;
/// Histogram buckets in seconds for the latency metrics (fsync and
/// create→settle): from sub-millisecond syncs to the 15-minute TTL cap.
const LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 900.0];
/// Buckets for commands per group commit (up to `store::writer::MAX_GROUP`).
const GROUP_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// Installs the global recorder. Call once, before the server starts.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    use metrics_exporter_prometheus::Matcher;
    use syncpay::metrics as m;
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(m::STORE_SYNC_SECONDS.to_owned()), LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(m::TRADE_SETTLE_SECONDS.to_owned()), LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(m::STORE_GROUP_SIZE.to_owned()), GROUP_BUCKETS)?
        .install_recorder()?;
    m::describe();
    Ok(handle)
}

/// Serves `GET /metrics` until `stop` turns true.
pub async fn serve(listener: TcpListener, handle: PrometheusHandle, mut stop: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener: accept failed");
                continue;
            }
        };
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let handle = handle.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let handle = handle.clone();
                async move { Ok::<_, Infallible>(respond(&req, &handle)) }
            });
            if let Err(e) =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await
            {
                tracing::debug!(error = %e, "metrics connection ended");
            }
            drop(permit);
        });
    }
}

fn respond(req: &Request<Incoming>, handle: &PrometheusHandle) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            // Histograms are summarised at scrape time; upkeep keeps their
            // memory bounded between scrapes.
            handle.run_upkeep();
            (StatusCode::OK, "text/plain; version=0.0.4", handle.render())
        }
        (&Method::GET, _) => (StatusCode::NOT_FOUND, "text/plain", "try /metrics\n".to_owned()),
        _ => (StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n".to_owned()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    response
}
