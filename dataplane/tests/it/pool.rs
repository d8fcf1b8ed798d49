//! Pingora's upstream connection pool, as the proxy's every request uses it:
//! a connection put back after a response is taken again by the next
//! request, every time (molt patch 4, `third_party/PATCHES.md`).

use pingora_core::connectors::TransportConnector;
use pingora_core::upstreams::peer::{BasicPeer, Peer};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Take-and-release cycles: enough that, on a multi-threaded runtime, the
/// pool's idle watcher is still dropping its reference to the connection
/// when the next request takes it, many times over.
const CYCLES: usize = 3000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pooled_connection_is_taken_again_every_time() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        // Hold every accepted connection open and silent, as an idle
        // keep-alive upstream does.
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            held.push(sock);
        }
    });

    let connector = TransportConnector::new(None);
    let peer = BasicPeer::new(&addr.to_string());
    let first = connector.new_stream(&peer).await.unwrap();
    connector.release_stream(first, peer.reuse_hash(), None);
    let mut missed = 0;
    for _ in 0..CYCLES {
        // Taken back at once, as the next request would: the pool's idle
        // watcher, woken on another worker, lets go of it at the same time.
        let stream = match connector.reused_stream(&peer).await {
            Some(stream) => stream,
            None => {
                missed += 1;
                connector.new_stream(&peer).await.unwrap()
            }
        };
        connector.release_stream(stream, peer.reuse_hash(), None);
        tokio::task::yield_now().await;
    }
    assert_eq!(
        missed, 0,
        "a pooled connection was dropped instead of reused"
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "only one connection was ever needed"
    );
}
