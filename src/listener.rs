//! Client connections: TLS when configured, and every connection that stays silent too
//! long is cut.
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
use poem::listener::{Acceptor, RustlsCertificate, RustlsConfig};
use poem::web::{LocalAddr, RemoteAddr};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Reads and checks the certificate chain and key for HTTPS. poem only logs a bad TLS
/// configuration (and then refuses every connection), so it is checked here, at start.
///
/// # Errors
/// One sentence naming the file and what is wrong with it.
pub fn tls_config(cert: &std::path::Path, key: &std::path::Path) -> Result<RustlsConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let (cert_pem, key_pem) = (read(cert)?, read(key)?);
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not a PEM certificate chain: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{} holds no PEM certificate", cert.display()));
    }
    let private_key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| format!("{} is not a PEM private key: {e}", key.display()))?;
    rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(chain, private_key)
    .map_err(|e| {
        format!(
            "{} and {} do not make a usable certificate and key: {e}",
            cert.display(),
            key.display()
        )
    })?;
    Ok(RustlsConfig::new().fallback(RustlsCertificate::new().cert(cert_pem).key(key_pem)))
}

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
