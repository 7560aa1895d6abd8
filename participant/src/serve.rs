//! Serving an endpoint on an address until told to stop: port 0 picks a free port, and the
//! address actually bound is known at once. For services, the fake participant and tests.

use std::net::SocketAddr;
use std::time::Duration;

use poem::listener::{Acceptor, Listener, TcpListener};
use poem::{Endpoint, Server};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a stop waits for requests in progress before cutting them.
const GRACE: Duration = Duration::from_secs(1);

/// An endpoint being served.
pub struct Serving {
    addr: SocketAddr,
    stop: CancellationToken,
    server: JoinHandle<std::io::Result<()>>,
}

impl Serving {
    /// Binds `listen` and serves `app` on the current tokio runtime.
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn start(app: impl Endpoint + 'static, listen: SocketAddr) -> std::io::Result<Self> {
        let acceptor = TcpListener::bind(listen).into_acceptor().await?;
        let addr = acceptor
            .local_addr()
            .first()
            .and_then(|a| a.as_socket_addr().copied())
            .ok_or_else(|| std::io::Error::other("the listener has no address"))?;
        let stop = CancellationToken::new();
        let token = stop.clone();
        let server = tokio::spawn(async move {
            Server::new_with_acceptor(acceptor)
                .run_with_graceful_shutdown(app, token.cancelled_owned(), Some(GRACE))
                .await
        });
        Ok(Self { addr, stop, server })
    }

    /// The address bound.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://{address}`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting, lets requests in progress finish (at most a second), and waits.
    ///
    /// # Errors
    /// When the server failed.
    pub async fn stop(self) -> std::io::Result<()> {
        self.stop.cancel();
        self.server.await.map_err(std::io::Error::other)?
    }
}
