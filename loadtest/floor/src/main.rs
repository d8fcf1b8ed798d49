//! The Pingora floor for `loadtest/compare.sh`: a plain Pingora 0.9 proxy
//! doing only what every Molt request also needs. `request_filter` checks
//! the client's bearer key against one configured key; `upstream_peer` is
//! one plain-HTTP upstream (pooled keep-alive, Pingora's default);
//! `upstream_request_filter` puts the master key in `Authorization`.
//! Nothing else: no body reading, no usage, no limits, no logging.
//!
//! Usage: `molt-pingora-floor LISTEN UPSTREAM CLIENT_KEY MASTER_KEY THREADS`

use async_trait::async_trait;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::server::configuration::{Opt, ServerConf};
use std::net::SocketAddr;

struct Floor {
    upstream: SocketAddr,
    client_auth: String,
    master_auth: String,
}

#[async_trait]
impl ProxyHttp for Floor {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Result<bool> {
        let authorized = session
            .req_header()
            .headers
            .get("authorization")
            .is_some_and(|v| v.as_bytes() == self.client_auth.as_bytes());
        if authorized {
            return Ok(false);
        }
        let mut head = ResponseHeader::build(401, Some(1))?;
        head.insert_header("content-length", "0")?;
        session.write_response_header(Box::new(head), true).await?;
        Ok(true)
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream: &mut RequestHeader,
        _ctx: &mut (),
    ) -> Result<()> {
        upstream.insert_header("authorization", self.master_auth.as_str())
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, upstream, client_key, master_key, threads] = args.as_slice() else {
        eprintln!("usage: molt-pingora-floor LISTEN UPSTREAM CLIENT_KEY MASTER_KEY THREADS");
        std::process::exit(2);
    };
    let floor = Floor {
        upstream: upstream.parse().expect("UPSTREAM is an ip:port"),
        client_auth: format!("Bearer {client_key}"),
        master_auth: format!("Bearer {master_key}"),
    };
    let conf = ServerConf {
        threads: threads.parse().expect("THREADS is a number"),
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(0),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, floor);
    proxy.add_tcp(listen);
    server.add_service(proxy);
    server.run_forever();
}
