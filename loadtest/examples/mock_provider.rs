//! Runs the mock provider on the address given as the first argument
//! (default `127.0.0.1:8900`), for SDK checks and manual poking:
//! `cargo run -p molt-loadtest --example mock_provider -- 127.0.0.1:8900`.

use molt_loadtest::mock_provider::{MockOptions, MockProvider};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8900".to_owned());
    let listener = tokio::net::TcpListener::bind(&address).await?;
    eprintln!(
        "mock provider listening on http://{}",
        listener.local_addr()?
    );
    MockProvider::new(MockOptions::default())
        .serve(listener)
        .await
}
