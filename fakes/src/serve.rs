//! Serving a fake's router, the same way for every fake: in the background
//! on `127.0.0.1:0` (tests), and over TLS with a given certificate.

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Bind `127.0.0.1:0`, serve `router` in the background until the process
/// ends, and return the base URL (`http://127.0.0.1:PORT`). `name` says
/// which fake stopped, should it stop.
pub(crate) async fn spawn(router: Router, name: &'static str) -> std::io::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router).await {
            tracing::error!(%error, "{name} stopped");
        }
    });
    Ok(format!("http://{addr}"))
}

/// Like [`spawn`], over TLS with `tls` (which holds a certificate valid for
/// `127.0.0.1`); returns `https://127.0.0.1:PORT`.
pub(crate) async fn spawn_tls(
    router: Router,
    tls: Arc<rustls::ServerConfig>,
    name: &'static str,
) -> std::io::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(serve_tls(router, listener, tls, name));
    Ok(format!("https://{addr}"))
}

/// Serve `router` on `listener` over TLS until the process ends. A failed
/// handshake or connection ends only that connection.
pub(crate) async fn serve_tls(
    router: Router,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    name: &'static str,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(error) => {
                // Out of descriptors and the like: pause, as axum::serve does.
                tracing::warn!(%error, "{name} accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let stream = match acceptor.accept(tcp).await {
                Ok(s) => s,
                Err(error) => {
                    tracing::debug!(%error, "{name} TLS handshake failed");
                    return;
                }
            };
            if let Err(error) = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, "{name} TLS connection ended");
            }
        });
    }
}
