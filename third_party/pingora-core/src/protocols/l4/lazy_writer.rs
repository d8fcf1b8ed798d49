// molt patch 14: a write buffer that holds memory only while data waits in it.

//! [`LazyBufWriter`]: tokio's `BufWriter` semantics (small writes gathered up to a capacity, a
//! write at least that large passed straight through, everything out on flush), with the buffer
//! allocated when a write is first gathered and freed once a flush empties it.
//!
//! Why: the write buffer of every connection (1,460 bytes by default) was allocated with the
//! connection and kept for its whole life. A held SSE stream or an idle WebSocket writes rarely,
//! and between its writes the buffer is empty: 1.4 KiB of a budget of 20 per connection, for
//! nothing. Gathering still works as before, for one allocation per flushed burst.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A buffered writer over `W` whose buffer exists only while it holds data.
#[derive(Debug)]
pub(crate) struct LazyBufWriter<W> {
    inner: W,
    /// Gathered bytes; no allocation while empty.
    buf: Vec<u8>,
    /// How much of `buf` has been written out by a flush in progress.
    written: usize,
    capacity: usize,
}

impl<W: AsyncWrite + Unpin> LazyBufWriter<W> {
    pub(crate) fn with_capacity(capacity: usize, inner: W) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            written: 0,
            capacity,
        }
    }

    pub(crate) fn get_ref(&self) -> &W {
        &self.inner
    }

    pub(crate) fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// The writer; anything still gathered is lost, as with `BufWriter::into_inner`.
    pub(crate) fn into_inner(self) -> W {
        self.inner
    }

    fn spare_capacity(&self) -> usize {
        self.capacity.saturating_sub(self.buf.len())
    }

    /// Gather `data`, which fits the spare capacity.
    fn gather(&mut self, data: &[u8]) {
        if self.buf.capacity() == 0 {
            self.buf.reserve_exact(self.capacity);
        }
        self.buf.extend_from_slice(data);
    }

    /// Write out everything gathered, then free the buffer.
    fn flush_buf(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "failed to write the buffered data",
                )));
            }
            self.written += n;
        }
        self.written = 0;
        self.buf = Vec::new();
        Poll::Ready(Ok(()))
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for LazyBufWriter<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if data.len() > self.spare_capacity() {
            ready!(self.flush_buf(cx))?;
        }
        if data.len() >= self.capacity {
            Pin::new(&mut self.inner).poll_write(cx, data)
        } else {
            self.gather(data);
            Poll::Ready(Ok(data.len()))
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if !self.inner.is_write_vectored() {
            // As std's default: the first non-empty slice.
            let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| &**b);
            return self.poll_write(cx, first);
        }
        let total = bufs.iter().fold(0usize, |acc, b| acc.saturating_add(b.len()));
        if total > self.spare_capacity() {
            ready!(self.flush_buf(cx))?;
        }
        if total >= self.capacity {
            Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
        } else {
            for b in bufs {
                self.gather(b);
            }
            Poll::Ready(Ok(total))
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.flush_buf(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.flush_buf(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<W: AsyncRead + Unpin> AsyncRead for LazyBufWriter<W> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn gathers_small_writes_and_frees_the_buffer_once_flushed() {
        let mut w = LazyBufWriter::with_capacity(16, Vec::new());
        assert_eq!(w.buf.capacity(), 0);
        w.write_all(b"abc").await.unwrap();
        w.write_all(b"def").await.unwrap();
        assert!(w.get_ref().is_empty(), "small writes wait in the buffer");
        assert!(w.buf.capacity() >= 16);
        w.flush().await.unwrap();
        assert_eq!(w.get_ref().as_slice(), b"abcdef");
        assert_eq!(w.buf.capacity(), 0, "an empty buffer holds no memory");
        // A write as large as the capacity goes straight through, after what waits.
        w.write_all(b"x").await.unwrap();
        w.write_all(&[b'y'; 16]).await.unwrap();
        let mut expected = b"abcdefx".to_vec();
        expected.extend_from_slice(&[b'y'; 16]);
        assert_eq!(w.get_ref().as_slice(), expected.as_slice());
        assert_eq!(w.buf.capacity(), 0);
    }

    #[tokio::test]
    async fn a_zero_capacity_writes_straight_through() {
        let mut w = LazyBufWriter::with_capacity(0, Vec::new());
        w.write_all(b"abc").await.unwrap();
        assert_eq!(w.get_ref().as_slice(), b"abc");
        assert_eq!(w.buf.capacity(), 0);
    }
}
