//! Runs the mock provider on the address given as the first argument
//! (default `127.0.0.1:8900`; port 0 for any), for SDK checks and manual
//! poking: `cargo run -p molt-fakes --example mock_provider -- 127.0.0.1:8900`.
//! With `--ready-file PATH` after the address it writes the address it got
//! there, as `molt mock-provider --ready-file` does.

use molt_config::ready::{write_ready_file, HTTP};
use molt_fakes::mock_provider::{MockOptions, MockProvider};
use std::path::PathBuf;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let address = args.next().unwrap_or_else(|| "127.0.0.1:8900".to_owned());
    let ready_file = match (args.next().as_deref(), args.next()) {
        (Some("--ready-file"), Some(path)) => Some(PathBuf::from(path)),
        (None, _) => None,
        _ => {
            return Err(std::io::Error::other(
                "usage: mock_provider [ADDRESS] [--ready-file PATH]",
            ))
        }
    };
    let listener = tokio::net::TcpListener::bind(&address).await?;
    let addr = listener.local_addr()?;
    if let Some(path) = ready_file {
        write_ready_file(&path, [(HTTP, addr)])?;
    }
    eprintln!("mock provider listening on http://{addr}");
    MockProvider::new(MockOptions::default())
        .serve(listener)
        .await
}
