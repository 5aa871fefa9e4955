//! A TCP proxy whose link can be cut: the lab's way to make the DC "go down"
//! for one controller without touching the shared Samba, which tests running
//! in parallel keep using.
//!
//! The controller is pointed at [`CutProxy::addr`] instead of the DC. While
//! the link is up, bytes pass both ways untouched (TLS goes end to end, so the
//! DC's certificate is still verified by the controller). [`CutProxy::cut`]
//! closes every live connection at once — what a client sees when the DC
//! process dies — and turns new ones away until [`CutProxy::restore`].
//! Loopback only: it listens on 127.0.0.1 and is meant for an upstream there.

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::{Context, Result};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct CutProxy {
    addr: SocketAddr,
    /// `true` while the link is up; connection tasks end as soon as it turns `false`.
    up: watch::Sender<bool>,
    /// Live proxied connections, so that `cut` can wait until they are all gone.
    live: watch::Sender<usize>,
    accept: JoinHandle<()>,
}

impl CutProxy {
    /// A proxy in front of the lab's DC. TLS goes end to end: the DC's certificate names
    /// 127.0.0.1, so verification holds on the proxy's port too.
    pub async fn in_front_of(lab: &crate::Lab) -> Result<CutProxy> {
        let url = lab.var("LAB_LDAPS_URL");
        let dc: SocketAddr = url
            .strip_prefix("ldaps://")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("LAB_LDAPS_URL {url} is not ldaps://<ip>:<port>"));
        CutProxy::start(dc).await
    }

    /// `config` (a controller's TOML for the lab) with its DC reached through this proxy.
    pub fn reroute(&self, lab: &crate::Lab, config: &str) -> String {
        config.replace(lab.var("LAB_LDAPS_URL"), &format!("ldaps://{}", self.addr()))
    }

    /// Listens on 127.0.0.1 (a free port) and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Result<CutProxy> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("binding the proxy on 127.0.0.1")?;
        let addr = listener.local_addr().context("the proxy's address")?;
        let (up, _) = watch::channel(true);
        let (live, _) = watch::channel(0usize);
        let accept = tokio::spawn(accept_loop(listener, upstream, up.clone(), live.clone()));
        Ok(CutProxy { addr, up, live, accept })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The DC is "down": closes every live connection, and every new one as soon as it is
    /// accepted, until [`CutProxy::restore`]. Returns once no connection is left open.
    pub async fn cut(&self) {
        self.up.send_replace(false);
        let mut live = self.live.subscribe();
        let _ = live.wait_for(|n| *n == 0).await;
    }

    /// [`CutProxy::cut`] as a plain function to call from anywhere (a log hook, another
    /// thread), which does not wait: every connection is closed as soon as its task sees it.
    pub fn cutter(&self) -> impl FnOnce() + Send + 'static {
        let up = self.up.clone();
        move || {
            up.send_replace(false);
        }
    }

    /// The DC is back: new connections go through again (closed ones stay closed).
    pub fn restore(&self) {
        self.up.send_replace(true);
    }

    /// Connections being proxied right now.
    pub fn live(&self) -> usize {
        *self.live.borrow()
    }
}

impl Drop for CutProxy {
    /// Stops accepting; dropping `up` ends every connection task too.
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, up: watch::Sender<bool>, live: watch::Sender<usize>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        // Accepted then dropped at once: the client's handshake fails on a closed connection,
        // as it would against a DC that is not there. (Closing the listener instead would free
        // the port for anyone else to take before `restore`.)
        if !*up.borrow() {
            continue;
        }
        live.send_modify(|n| *n += 1);
        tokio::spawn(pipe(client, upstream, up.subscribe(), live.clone()));
    }
}

/// One proxied connection, until either side closes it or the link is cut.
async fn pipe(mut client: TcpStream, upstream: SocketAddr, mut up: watch::Receiver<bool>, live: watch::Sender<usize>) {
    if let Ok(mut server) = TcpStream::connect(upstream).await {
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
            // `wait_for` looks at the current value first: a cut that came between the accept
            // and here closes this connection too. An error means the proxy was dropped.
            _ = up.wait_for(|up| !*up) => {}
        }
    }
    // Both sockets close here (dropped), which the client reads as the server going away.
    drop(client);
    live.send_modify(|n| *n -= 1);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A plain TCP echo server on loopback: the upstream, counting the connections it gets.
    async fn echo_server() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        (addr, accepted)
    }

    /// Sends `msg` and reads the echo; an error when the connection is closed.
    async fn echo(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
        s.write_all(msg).await?;
        let mut buf = vec![0; msg.len()];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("an answer or a close within 5 s")?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.truncate(n);
        Ok(buf)
    }

    #[tokio::test]
    async fn cut_drops_live_connections_and_refuses_new_ones_until_restored() {
        let (upstream, accepted) = echo_server().await;
        let proxy = CutProxy::start(upstream).await.unwrap();
        assert!(proxy.addr().ip().is_loopback());

        // Up: bytes go through both ways.
        let mut a = TcpStream::connect(proxy.addr()).await.unwrap();
        let mut b = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(echo(&mut a, b"ping a").await.unwrap(), b"ping a");
        assert_eq!(echo(&mut b, b"ping b").await.unwrap(), b"ping b");
        assert_eq!(proxy.live(), 2);

        // Cut: both live connections are closed at once...
        proxy.cut().await;
        assert_eq!(proxy.live(), 0);
        for s in [&mut a, &mut b] {
            assert!(
                echo(s, b"still there?").await.is_err(),
                "a live connection survived the cut"
            );
        }
        // ...and a new one is accepted by the kernel but closed without an answer.
        let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(
            echo(&mut c, b"hello?").await.is_err(),
            "a new connection got through the cut"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "the upstream heard of a connection made during the cut"
        );

        // Restored: new connections go through again.
        proxy.restore();
        let mut d = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(echo(&mut d, b"back").await.unwrap(), b"back");
    }
}
