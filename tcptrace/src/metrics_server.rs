//! `--metrics ADDR:PORT`: the metrics served at `/metrics` over HTTP/1.1 (hyper). The
//! address is bound before anything is attached, so a port in use is an error at once;
//! each scrape is its own task that only reads the metrics, so a slow or stuck scraper
//! never holds up tracing.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode, header, server::conn::http1, service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};

use crate::render::metrics::{CONTENT_TYPE, Metrics};

/// A scraper that has not sent its request line and headers in this long is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds `address` for the metrics (before tracing starts: a clear error if it can't).
pub fn bind(address: SocketAddr) -> Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(address)
        .with_context(|| format!("cannot serve --metrics on {address}"))?;
    listener.set_nonblocking(true).context("setting the metrics listener non-blocking")?;
    Ok(listener)
}

/// Serves `metrics` on `listener` until the program ends.
pub async fn serve(listener: std::net::TcpListener, metrics: Arc<Metrics>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("tcptrace: warning: --metrics is off: {error}");
            return;
        }
    };
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| respond(request, metrics.clone()));
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(error) = connection.await {
                crate::debug(format_args!("a metrics scrape failed: {error}"));
            }
        });
    }
}

async fn respond(
    request: Request<hyper::body::Incoming>,
    metrics: Arc<Metrics>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        if let Ok(value) = header::HeaderValue::from_str(content_type) {
            response.headers_mut().insert(header::CONTENT_TYPE, value);
        }
        Ok(response)
    };
    let text = "text/plain; charset=utf-8";
    match (request.method(), request.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => {
            reply(StatusCode::OK, CONTENT_TYPE, metrics.encode())
        }
        (&Method::GET | &Method::HEAD, "/") => {
            reply(StatusCode::OK, text, "tcptrace: the metrics are at /metrics\n".into())
        }
        (_, "/metrics" | "/") => {
            reply(StatusCode::METHOD_NOT_ALLOWED, text, "only GET and HEAD\n".into())
        }
        _ => reply(StatusCode::NOT_FOUND, text, "not found: the metrics are at /metrics\n".into()),
    }
}
