//! Client connections: every connection that stays silent too long is cut.
//!
//! poem's own idle timeout closes a connection gracefully, which waits for the request in
//! progress, so a client that sends half its headers and stops holds its connection forever.
//! Here a connection that moves no byte either way for the idle timeout fails its next read
//! or write, and hyper drops it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use poem::http::uri::Scheme;
use poem::listener::Acceptor;
use poem::web::{LocalAddr, RemoteAddr};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// An acceptor whose connections are cut after `idle` without traffic.
pub struct SilenceCutting<A> {
    inner: A,
    idle: Duration,
}

impl<A> SilenceCutting<A> {
    pub fn new(inner: A, idle: Duration) -> Self {
        Self { inner, idle }
    }
}

impl<A: Acceptor> Acceptor for SilenceCutting<A> {
    type Io = Silence<A::Io>;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.inner.local_addr()
    }

    fn accept(
        &mut self,
    ) -> impl Future<Output = io::Result<(Self::Io, LocalAddr, RemoteAddr, Scheme)>> + Send {
        let idle = self.idle;
        let accepted = self.inner.accept();
        async move {
            let (io, local, remote, scheme) = accepted.await?;
            Ok((Silence::new(io, idle), local, remote, scheme))
        }
    }
}

/// A connection that fails once no byte has moved for `idle`.
pub struct Silence<T> {
    inner: T,
    idle: Duration,
    last_activity: Instant,
    /// Armed lazily: it fires at `last_activity + idle` at the earliest, and is pushed back
    /// then if there was traffic meanwhile (no timer reset per read).
    timer: Pin<Box<Sleep>>,
}

impl<T> Silence<T> {
    fn new(inner: T, idle: Duration) -> Self {
        let now = Instant::now();
        Self {
            inner,
            idle,
            last_activity: now,
            timer: Box::pin(tokio::time::sleep_until(now + idle)),
        }
    }

    /// Called while the inner side is pending: an error once the connection has been silent
    /// for `idle`.
    fn check_silence(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            let due = self.last_activity + self.idle;
            if self.timer.deadline() < due {
                self.timer.as_mut().reset(due);
            }
            match self.timer.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) if Instant::now() >= self.last_activity + self.idle => {
                    return Poll::Ready(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client sent and read nothing for the idle timeout",
                    ));
                }
                Poll::Ready(()) => {} // traffic meanwhile: re-arm
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Silence<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                self.last_activity = Instant::now();
                Poll::Ready(result)
            }
            Poll::Pending => self.check_silence(cx).map(Err),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Silence<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(result) => {
                self.last_activity = Instant::now();
                Poll::Ready(result)
            }
            Poll::Pending => self.check_silence(cx).map(Err),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(result) => {
                self.last_activity = Instant::now();
                Poll::Ready(result)
            }
            Poll::Pending => self.check_silence(cx).map(Err),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
