//! Server TLS for both gRPC endpoints, built in one place: the controller's
//! identity, and the CA that client certificates are verified against —
//! required for agents (a stream speaks for the host in its certificate),
//! optional for the fleet API (token callers have no certificate).
//!
//! tonic's own `ServerTlsConfig` is fixed when the server starts, so the
//! endpoints accept TLS here instead ([`incoming`]): each new connection takes
//! the [`ServerTls`]'s current rustls config, and SIGHUP swaps it
//! ([`ServerTls::replace`]) — a renewed certificate or a changed client CA
//! applies to the next connection without a restart. The streams are
//! tokio-rustls streams over TCP, so `Request::peer_certs()` (the agent's and
//! API client's identity) works as with tonic's own TLS.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use tonic::transport::server::Connected;

use super::limits::ConnLimits;
use crate::config::{AgentsConfig, ApiConfig};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{key} {path}: {message}")]
    File {
        key: String,
        path: PathBuf,
        message: String,
    },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

/// The server TLS config of one endpoint, swappable while it serves.
pub struct ServerTls {
    current: RwLock<Arc<ServerConfig>>,
}

impl ServerTls {
    fn new(cfg: ServerConfig) -> ServerTls {
        ServerTls {
            current: RwLock::new(Arc::new(cfg)),
        }
    }

    /// Takes `other`'s config for every connection accepted from now on;
    /// connections already open keep theirs.
    pub fn replace(&self, other: &ServerTls) {
        let next = other.current();
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = next;
    }

    fn current(&self) -> Arc<ServerConfig> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The agent endpoint: client certificates from the agents' CA, required — unless agents
/// enroll (`[agents.enroll]`): an agent without a certificate must reach `Enroll`, so one is
/// then optional at the handshake and `Session` refuses a stream without one itself.
pub fn for_agents(cfg: &AgentsConfig) -> Result<Arc<ServerTls>, TlsError> {
    Ok(Arc::new(ServerTls::new(server_config(
        "agents",
        &cfg.cert_file,
        &cfg.key_file,
        Some(&cfg.client_ca_file),
        cfg.enroll.is_none(),
    )?)))
}

/// The fleet API: client certificates from `client_ca_file` accepted, not required.
pub fn for_api(cfg: &ApiConfig) -> Result<Arc<ServerTls>, TlsError> {
    Ok(Arc::new(ServerTls::new(server_config(
        "api",
        &cfg.cert_file,
        &cfg.key_file,
        cfg.client_ca_file.as_deref(),
        false,
    )?)))
}

fn pem_err(key: &str, path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        key: key.into(),
        path: path.to_owned(),
        message: e.to_string(),
    }
}

fn certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_err(key, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(key, path, e))?;
    if certs.is_empty() {
        return Err(pem_err(key, path, "holds no PEM certificate"));
    }
    Ok(certs)
}

fn server_config(
    table: &str,
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
    client_required: bool,
) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let invalid = |k: &str, e: &dyn std::fmt::Display| TlsError::Invalid {
        key: format!("{table}.{k}"),
        message: e.to_string(),
    };
    let chain = certs(&format!("{table}.cert_file"), cert)?;
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_err(&format!("{table}.key_file"), key, e))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("cert_file", &e))?;
    let builder = match client_ca {
        Some(ca) => {
            let key = format!("{table}.client_ca_file");
            let mut roots = RootCertStore::empty();
            for c in certs(&key, ca)? {
                roots.add(c).map_err(|e| pem_err(&key, ca, e))?;
            }
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let v = if client_required { v } else { v.allow_unauthenticated() };
            builder.with_client_cert_verifier(v.build().map_err(|e| invalid("client_ca_file", &e))?)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder
        .with_single_cert(chain, private)
        .map_err(|e| invalid("key_file", &format!("does not match the certificate: {e}")))?;
    // gRPC is HTTP/2 only.
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

/// The TLS connections accepted on `listener`, for tonic's
/// `serve_with_incoming_shutdown`. Handshakes run concurrently, each with
/// the config current when its TCP connection arrived; a failed or slow
/// handshake drops that connection only. Within `limits`: a connection over
/// the open-connection cap, or over the handshake caps (in all, and per peer
/// IP, so one slow client cannot hold every slot), is closed at once; a
/// handshake not done within the timeout is dropped. Accepting stops when the
/// server drops the stream.
///
/// `cutoffs`, when given, can close any of these connections by peer address
/// (the agent hub cuts off an agent that does not read).
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    limits: ConnLimits,
    cutoffs: Option<Arc<Cutoffs>>,
) -> tokio_stream::wrappers::ReceiverStream<Result<Limited, std::io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let open = Arc::new(Semaphore::new(limits.connections));
    let shaking = Arc::new(Handshakes::default());
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                _ = tx.closed() => break,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = open.clone().try_acquire_owned() else {
                tracing::warn!(%peer, limit = limits.connections, "connection refused: too many open connections");
                continue;
            };
            let Some(slot) = shaking.take(peer.ip(), &limits) else {
                tracing::info!(%peer, "connection refused: too many TLS handshakes in flight");
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = TlsAcceptor::from(tls.current());
            let tx = tx.clone();
            let cutoffs = cutoffs.clone();
            tokio::spawn(async move {
                let shaken = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await;
                drop(slot);
                match shaken {
                    Ok(Ok(stream)) => {
                        let cut = cutoffs.map(|c| c.register(peer));
                        let _ = tx.send(Ok(Limited::new(stream, permit, cut))).await;
                    }
                    Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake refused"),
                    Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// TLS handshakes in flight, in all and per peer IP.
#[derive(Default)]
struct Handshakes {
    by_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// One handshake slot; given back when dropped.
struct HandshakeSlot {
    of: Arc<Handshakes>,
    ip: IpAddr,
}

impl Handshakes {
    fn take(self: &Arc<Self>, ip: IpAddr, limits: &ConnLimits) -> Option<HandshakeSlot> {
        let mut map = self.by_ip.lock().unwrap_or_else(|e| e.into_inner());
        let total: usize = map.values().sum();
        let mine = map.get(&ip).copied().unwrap_or(0);
        if total >= limits.handshakes || mine >= limits.handshakes_per_ip {
            return None;
        }
        *map.entry(ip).or_default() += 1;
        Some(HandshakeSlot { of: self.clone(), ip })
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut map = self.of.by_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Open connections by peer address, each closable from outside.
#[derive(Default)]
pub struct Cutoffs {
    by_peer: Mutex<HashMap<SocketAddr, watch::Sender<bool>>>,
}

impl Cutoffs {
    fn register(self: &Arc<Self>, peer: SocketAddr) -> Cutoff {
        let (tx, rx) = watch::channel(false);
        self.by_peer.lock().unwrap_or_else(|e| e.into_inner()).insert(peer, tx);
        Cutoff {
            of: self.clone(),
            peer,
            rx,
        }
    }

    /// Closes the connection from `peer`: its next read or write fails, and
    /// the server drops it with every stream on it. `false` if none is open.
    pub fn cut(&self, peer: SocketAddr) -> bool {
        let map = self.by_peer.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&peer).is_some_and(|tx| tx.send(true).is_ok())
    }

    /// Closes every open connection; how many there were.
    pub fn cut_all(&self) -> usize {
        let map = self.by_peer.lock().unwrap_or_else(|e| e.into_inner());
        map.values().filter(|tx| tx.send(true).is_ok()).count()
    }
}

/// Resolves once a cut is signalled; never, when the sender goes without one.
pub(super) type CutSignal = Pin<Box<dyn Future<Output = ()> + Send + Sync>>;

pub(super) fn cut_signal(mut rx: watch::Receiver<bool>) -> CutSignal {
    Box::pin(async move {
        if rx.wait_for(|v| *v).await.is_err() {
            std::future::pending::<()>().await;
        }
    })
}

/// One connection's entry in [`Cutoffs`]; removed when the connection goes.
struct Cutoff {
    of: Arc<Cutoffs>,
    peer: SocketAddr,
    rx: watch::Receiver<bool>,
}

impl Drop for Cutoff {
    fn drop(&mut self) {
        self.of
            .by_peer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.peer);
    }
}

/// An accepted TLS connection holding one of the endpoint's connection slots
/// until tonic drops it. Reads, writes and `peer_certs()` are the TLS stream's;
/// once cut off, both fail, which ends the connection even while the server
/// waits on a peer that reads nothing.
pub struct Limited {
    stream: TlsStream<TcpStream>,
    _permit: OwnedSemaphorePermit,
    cut: Option<(Cutoff, CutSignal)>,
    dead: bool,
}

impl Limited {
    fn new(stream: TlsStream<TcpStream>, permit: OwnedSemaphorePermit, cut: Option<Cutoff>) -> Limited {
        let cut = cut.map(|c| {
            let signal = cut_signal(c.rx.clone());
            (c, signal)
        });
        Limited {
            stream,
            _permit: permit,
            cut,
            dead: false,
        }
    }

    /// An error once the connection was cut off (and registers for the cut).
    fn cut_off(&mut self, cx: &mut Context<'_>) -> Option<std::io::Error> {
        let (_, fut) = self.cut.as_mut()?;
        // A finished future must not be polled again: remember the cut.
        if self.dead || fut.as_mut().poll(cx).is_ready() {
            self.dead = true;
            return Some(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "the controller cut this connection off",
            ));
        }
        None
    }
}

impl Connected for Limited {
    type ConnectInfo = <TlsStream<TcpStream> as Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Limited {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let me = self.get_mut();
        if let Some(e) = me.cut_off(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut me.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Limited {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let me = self.get_mut();
        if let Some(e) = me.cut_off(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut me.stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let me = self.get_mut();
        if let Some(e) = me.cut_off(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut me.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(handshakes: usize, per_ip: usize) -> ConnLimits {
        ConnLimits {
            connections: 10,
            handshakes,
            handshakes_per_ip: per_ip,
            handshake_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn one_address_cannot_take_every_handshake_slot() {
        let h = Arc::new(Handshakes::default());
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let l = limits(3, 2);
        let a1 = h.take(a, &l).expect("first");
        let _a2 = h.take(a, &l).expect("second");
        assert!(
            h.take(a, &l).is_none(),
            "a third from one address waits for a slot of its own"
        );
        let _b1 = h.take(b, &l).expect("another address still gets one");
        assert!(h.take(b, &l).is_none(), "all slots taken");
        drop(a1);
        assert!(h.take(a, &l).is_some(), "a finished handshake gives its slot back");
    }
}
