//! A small SMTP sink: accepts every message (RFC 5321's EHLO/HELO, MAIL,
//! RCPT, DATA with dot-unstuffing, RSET, NOOP, QUIT; no TLS, no AUTH),
//! keeps it in memory, and with a directory writes each one there as
//! `<n>.eml`, where `molt dev` tells the developer to read them.
//!
//! Fault injection: [`SmtpSink::refuse_next`] answers the next messages'
//! `DATA` with `451` (a temporary failure, which a client retries).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// One accepted message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMail {
    /// The envelope sender (`MAIL FROM`).
    pub from: String,
    /// The envelope recipients (`RCPT TO`).
    pub to: Vec<String>,
    /// The message as sent: headers and body, CRLF line ends.
    pub data: String,
}

#[derive(Debug, Default)]
struct State {
    mail: Mutex<Vec<ReceivedMail>>,
    refuse: AtomicUsize,
    dir: Option<PathBuf>,
}

/// The sink; cheap to clone (clones share the mailbox).
#[derive(Debug, Clone, Default)]
pub struct SmtpSink {
    state: Arc<State>,
}

impl SmtpSink {
    /// A sink that keeps messages in memory only.
    pub fn new() -> Self {
        Self::default()
    }

    /// A sink that also writes each message to `dir/<n>.eml`.
    pub fn with_dir(dir: PathBuf) -> Self {
        Self {
            state: Arc::new(State {
                dir: Some(dir),
                ..State::default()
            }),
        }
    }

    /// Every message accepted so far, in order.
    pub fn messages(&self) -> Vec<ReceivedMail> {
        self.lock().clone()
    }

    /// Answer the next `n` messages' `DATA` with `451`.
    pub fn refuse_next(&self, n: usize) {
        self.state.refuse.store(n, Ordering::SeqCst);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<ReceivedMail>> {
        // A panicking connection task cannot leave the list half-written:
        // it is only ever pushed to.
        self.state
            .mail
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Bind `127.0.0.1:0`, serve in the background, and return the port.
    pub async fn spawn(&self) -> std::io::Result<u16> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let me = self.clone();
        tokio::spawn(async move { me.serve(listener).await });
        Ok(port)
    }

    /// Serve `listener` until the process ends; a broken conversation ends
    /// only its connection.
    pub async fn serve(self, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((tcp, _)) => {
                    let me = self.clone();
                    tokio::spawn(async move {
                        if let Err(error) = me.converse(tcp).await {
                            tracing::debug!(%error, "smtp sink connection ended");
                        }
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, "smtp sink accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn converse(&self, tcp: TcpStream) -> std::io::Result<()> {
        let (read, mut write) = tcp.into_split();
        let mut lines = BufReader::new(read);
        write.write_all(b"220 molt-smtp-sink ESMTP\r\n").await?;
        let (mut from, mut to) = (String::new(), Vec::new());
        let mut line = String::new();
        loop {
            line.clear();
            if lines.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let command = line.trim_end();
            let verb = command
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_ascii_uppercase();
            let reply: &[u8] = match verb.as_str() {
                "EHLO" => b"250-molt-smtp-sink\r\n250 8BITMIME\r\n",
                "HELO" | "NOOP" => b"250 ok\r\n",
                "RSET" => {
                    (from, to) = (String::new(), Vec::new());
                    b"250 ok\r\n"
                }
                "MAIL" => {
                    from = address(command);
                    to.clear();
                    b"250 ok\r\n"
                }
                "RCPT" => {
                    to.push(address(command));
                    b"250 ok\r\n"
                }
                "DATA" if to.is_empty() => b"503 need RCPT first\r\n",
                "DATA" => {
                    write.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
                    let data = read_data(&mut lines).await?;
                    let refused = self
                        .state
                        .refuse
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok();
                    if refused {
                        b"451 try again later\r\n"
                    } else {
                        self.keep(ReceivedMail {
                            from: std::mem::take(&mut from),
                            to: std::mem::take(&mut to),
                            data,
                        });
                        b"250 queued\r\n"
                    }
                }
                "QUIT" => {
                    write.write_all(b"221 bye\r\n").await?;
                    return Ok(());
                }
                _ => b"502 not implemented\r\n",
            };
            write.write_all(reply).await?;
        }
    }

    fn keep(&self, mail: ReceivedMail) {
        let mut list = self.lock();
        if let Some(dir) = &self.state.dir {
            let path = dir.join(format!("{}.eml", list.len() + 1));
            match std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, &mail.data)) {
                Ok(()) => tracing::info!(
                    to = mail.to.join(", "),
                    path = %path.display(),
                    "email received by the local SMTP sink"
                ),
                Err(error) => {
                    tracing::warn!(%error, path = %path.display(), "smtp sink cannot write a message")
                }
            }
        }
        list.push(mail);
    }
}

/// The address of `MAIL FROM:<a>` / `RCPT TO:<a>` (parameters dropped).
fn address(command: &str) -> String {
    let rest = command.split_once(':').map_or("", |(_, r)| r);
    rest.split_whitespace()
        .next()
        .unwrap_or("")
        .trim_matches(|c| c == '<' || c == '>')
        .to_owned()
}

/// The lines up to `.` alone, with the client's dot-stuffing removed.
async fn read_data<R: tokio::io::AsyncBufRead + Unpin>(lines: &mut R) -> std::io::Result<String> {
    let mut data = String::new();
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line.trim_end_matches(['\r', '\n']) == "." {
            return Ok(data);
        }
        data.push_str(line.strip_prefix('.').unwrap_or(&line));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_lose_brackets_and_parameters() {
        assert_eq!(address("MAIL FROM:<a@b.c> BODY=8BITMIME"), "a@b.c");
        assert_eq!(address("RCPT TO: <x@y.z>"), "x@y.z");
    }

    #[tokio::test]
    async fn data_is_unstuffed_and_ends_at_a_lone_dot() {
        let input = b"Subject: hi\r\n\r\n..leading dot\r\nbody\r\n.\r\nNEXT\r\n";
        let mut r = BufReader::new(&input[..]);
        let data = read_data(&mut r).await.unwrap();
        assert_eq!(data, "Subject: hi\r\n\r\n.leading dot\r\nbody\r\n");
    }
}
