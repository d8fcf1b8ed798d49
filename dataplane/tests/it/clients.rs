//! Slow and greedy clients: the whole-header deadline closes a client that
//! trickles its header, an idle keep-alive connection is closed after its
//! timeout, and past `max_connections` a new connection gets a clear 503;
//! each counted, none of it an error in the log.

use crate::support::{config_with, mock_provider, Dataplane};
use molt_fakes::mock_provider::MockOptions;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start(server: &str) -> Dataplane {
    let (_mock, addr) = mock_provider(MockOptions::default()).await;
    Dataplane::start(&config_with(addr, server, "")).await
}

/// Read until the server closes the connection (or `limit` passes); what
/// was read, and when the close came.
async fn read_until_closed(conn: &mut TcpStream, limit: Duration) -> (String, Option<Instant>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return (String::from_utf8_lossy(&got).into(), Some(Instant::now()))
            }
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&got).into(), None),
        }
    }
}

async fn get_models(addr: SocketAddr) -> String {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET /v1/models HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    read_until_closed(&mut conn, Duration::from_secs(5)).await.0
}

async fn metric(dp: &Dataplane, name: &str) -> f64 {
    let mut conn = TcpStream::connect(dp.listeners.admin).await.unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let (text, _) = read_until_closed(&mut conn, Duration::from_secs(5)).await;
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.trim().parse().ok()))
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trickling_its_header_is_closed_at_the_header_timeout() {
    let dp = start(r#"header_timeout = "1s""#).await;
    let addr = dp.listeners.http;
    let slow = TcpStream::connect(addr).await.unwrap();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let (mut slow_read, mut slow_write) = slow.into_split();
    slow_write
        .write_all(b"GET /v1/models HTTP/1.1\r\n")
        .await
        .unwrap();
    // One header byte every 200 ms: each read is quick, the header never
    // ends. The trickle runs on while the test watches for the close.
    tokio::spawn(async move {
        for b in b"x-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter() {
            if slow_write.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let slow_closed = async {
        let mut buf = [0u8; 1024];
        let limit = Duration::from_secs(5);
        loop {
            match tokio::time::timeout(limit, slow_read.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => return Some(Instant::now()),
                Ok(Ok(_)) => {}
                Err(_) => return None,
            }
        }
    };
    let (slow_closed, (_, silent_closed)) = tokio::join!(
        slow_closed,
        read_until_closed(&mut silent, Duration::from_secs(5))
    );
    for (who, closed) in [("trickling", slow_closed), ("silent", silent_closed)] {
        let after = closed
            .unwrap_or_else(|| panic!("the {who} client was not closed"))
            .duration_since(started);
        assert!(
            after >= Duration::from_millis(900) && after < Duration::from_secs(4),
            "the {who} client was closed after {after:?}"
        );
    }
    // A real client meanwhile is served at once.
    assert!(get_models(addr).await.starts_with("HTTP/1.1 401"));
    assert!(
        metric(&dp, r#"molt_client_ends_total{kind="header_timeout"}"#).await >= 2.0,
        "both slow clients were counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_its_timeout() {
    let dp = start(r#"keepalive_timeout = "1s""#).await;
    let mut conn = TcpStream::connect(dp.listeners.http).await.unwrap();
    conn.write_all(b"GET /v1/models HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let answered = Instant::now();
    let (text, closed) = read_until_closed(&mut conn, Duration::from_secs(5)).await;
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    let idle = closed
        .expect("closed by the server")
        .duration_since(answered);
    assert!(
        idle >= Duration::from_millis(900) && idle < Duration::from_secs(3),
        "{idle:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_connection_cap_a_new_client_gets_a_clear_503() {
    let dp = start("max_connections = 2").await;
    let addr = dp.listeners.http;
    let held_a = TcpStream::connect(addr).await.unwrap();
    let _held_b = TcpStream::connect(addr).await.unwrap();
    // Let the server take both before the third arrives.
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&dp, "molt_client_connections").await < 2.0 {
        assert!(
            Instant::now() < deadline,
            "the two connections were not taken"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = get_models(addr).await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(refused.contains("too_many_connections") && refused.contains("retry-after: 1"));
    assert_eq!(
        metric(&dp, "molt_client_connections_refused_total").await,
        1.0
    );
    drop(held_a);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let answer = get_models(addr).await;
        if answer.starts_with("HTTP/1.1 401") {
            break;
        }
        assert!(Instant::now() < deadline, "a slot never freed up: {answer}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
