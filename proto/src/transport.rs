//! QUIC transport shared by every role: endpoints with mutual TLS, one request per
//! bidirectional stream, typed calls with a timeout and a response size limit, a connection
//! pool, and a server loop that dispatches each stream to a service.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span, warn};

use crate::error::{ErrorCode, WireError};
use crate::ids::CertFingerprint;
use crate::tls::{Identity, TlsError};
use crate::wire::{self, FrameError, HEADER_LEN, MAX_FRAME_BYTES, Rpc};

/// UDP socket buffer size: 4 MiB removed packet loss on loopback and gained 5-10%.
const SOCKET_BUFFER_BYTES: usize = 4 * 1024 * 1024;
/// Idle connections are closed after this long without traffic.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Keep-alives keep idle pooled connections from timing out under the idle timeout.
const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// Concurrent requests a peer may have in flight on one connection.
const MAX_CONCURRENT_STREAMS: u32 = 256;
/// Default deadline for one request/response.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline for establishing a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of a call.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Could not connect.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// Peer address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The connection or stream failed mid-call.
    #[error("connection to {addr} failed: {reason}")]
    Io {
        /// Peer address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// No answer in time.
    #[error("{addr} did not answer {rpc} within {timeout:?}")]
    Timeout {
        /// Peer address.
        addr: String,
        /// Request name.
        rpc: &'static str,
        /// Deadline.
        timeout: Duration,
    },
    /// The answer was not a valid frame.
    #[error("bad answer from {addr}: {source}")]
    Frame {
        /// Peer address.
        addr: String,
        /// Decode error.
        #[source]
        source: FrameError,
    },
    /// The peer answered with an error.
    #[error("{addr} refused {rpc}: {error}")]
    Remote {
        /// Peer address.
        addr: String,
        /// Request name.
        rpc: &'static str,
        /// The error.
        error: WireError,
    },
}

impl CallError {
    /// The remote error code, if the peer answered with an error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            CallError::Remote { error, .. } => Some(error.code),
            _ => None,
        }
    }

    /// Whether the peer (rather than the request) is the likely problem: the caller should try
    /// another node.
    pub fn is_peer_failure(&self) -> bool {
        match self {
            CallError::Remote { error, .. } => error.code.is_retryable(),
            _ => true,
        }
    }
}

/// Errors creating an endpoint.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// TLS setup failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Binding the UDP socket failed.
    #[error("cannot bind UDP {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// quinn rejected the configuration.
    #[error("QUIC configuration: {0}")]
    Config(String),
}

fn transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(MAX_CONCURRENT_STREAMS.into());
    t.max_idle_timeout(Some(
        IDLE_TIMEOUT
            .try_into()
            .expect("invariant: 30 s fits in a QUIC idle timeout"),
    ));
    t.keep_alive_interval(Some(KEEP_ALIVE));
    t
}

fn udp_socket(addr: SocketAddr) -> Result<std::net::UdpSocket, EndpointError> {
    let bind = |e| EndpointError::Bind { addr, source: e };
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))
        .map_err(bind)?;
    // Larger buffers are an optimisation; a kernel that refuses them still works.
    let _ = s.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
    let _ = s.set_send_buffer_size(SOCKET_BUFFER_BYTES);
    s.bind(&addr.into()).map_err(bind)?;
    Ok(s.into())
}

fn client_cfg(tls: rustls::ClientConfig) -> Result<quinn::ClientConfig, EndpointError> {
    let q = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| EndpointError::Config(e.to_string()))?;
    let mut c = quinn::ClientConfig::new(Arc::new(q));
    c.transport_config(Arc::new(transport_config()));
    Ok(c)
}

/// A server endpoint (which can also dial out with the same identity).
pub fn server_endpoint(
    identity: &Identity,
    addr: SocketAddr,
    allow_anonymous: bool,
) -> Result<quinn::Endpoint, EndpointError> {
    let tls = identity.server_config(allow_anonymous)?;
    let q = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| EndpointError::Config(e.to_string()))?;
    let mut sc = quinn::ServerConfig::with_crypto(Arc::new(q));
    sc.transport_config(Arc::new(transport_config()));
    let runtime =
        quinn::default_runtime().ok_or_else(|| EndpointError::Config("no async runtime".into()))?;
    let mut ep = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(sc),
        udp_socket(addr)?,
        runtime,
    )
    .map_err(|e| EndpointError::Bind { addr, source: e })?;
    ep.set_default_client_config(client_cfg(identity.client_config()?)?);
    Ok(ep)
}

/// A client-only endpoint on an ephemeral port, presenting `identity`.
pub fn client_endpoint(identity: &Identity) -> Result<quinn::Endpoint, EndpointError> {
    client_endpoint_with(identity.client_config()?)
}

/// A client-only endpoint with an explicit TLS configuration (joining, tests).
pub fn client_endpoint_with(tls: rustls::ClientConfig) -> Result<quinn::Endpoint, EndpointError> {
    let addr: SocketAddr = ([0, 0, 0, 0], 0).into();
    let runtime =
        quinn::default_runtime().ok_or_else(|| EndpointError::Config("no async runtime".into()))?;
    let mut ep = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        udp_socket(addr)?,
        runtime,
    )
    .map_err(|e| EndpointError::Bind { addr, source: e })?;
    ep.set_default_client_config(client_cfg(tls)?);
    Ok(ep)
}

/// Resolve `host:port` to a socket address.
pub fn resolve(addr: &str) -> Result<SocketAddr, CallError> {
    use std::net::ToSocketAddrs;
    addr.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| CallError::Connect {
            addr: addr.to_string(),
            reason: "cannot resolve".into(),
        })
}

/// Dial a peer.
pub async fn connect(
    ep: &quinn::Endpoint,
    addr: &str,
    server_name: &str,
) -> Result<quinn::Connection, CallError> {
    let sa = resolve(addr)?;
    let err = |e: String| CallError::Connect {
        addr: addr.to_string(),
        reason: e,
    };
    let connecting = ep
        .connect(sa, server_name)
        .map_err(|e| err(e.to_string()))?;
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(err(e.to_string())),
        Err(_) => Err(err(format!("no handshake within {CONNECT_TIMEOUT:?}"))),
    }
}

async fn read_frame_bytes(recv: &mut quinn::RecvStream, limit: u32) -> Result<Vec<u8>, String> {
    let mut header = [0u8; HEADER_LEN];
    recv.read_exact(&mut header)
        .await
        .map_err(|e| e.to_string())?;
    let len = wire::decode_header(&header, limit).map_err(|e| e.to_string())?;
    // Appending quinn's received chunks copies each byte once and, unlike `read_exact` into a
    // zeroed buffer, does not write (and fault in) the whole body twice.
    let mut body = Vec::with_capacity(len);
    while body.len() < len {
        match recv.read_chunk(len - body.len(), true).await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk.bytes),
            Ok(None) => {
                return Err(format!(
                    "stream ended after {} of {len} body bytes",
                    body.len()
                ));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(body)
}

/// Send a typed request on a new stream of `conn` and wait for its typed answer.
pub async fn call<R: Rpc>(
    conn: &quinn::Connection,
    req: R,
    timeout: Duration,
) -> Result<R::Response, CallError> {
    let envelope: R::Envelope = req.into();
    let frame = wire::encode_frame(&envelope);
    drop(envelope);
    call_encoded::<R>(conn, vec![Bytes::from(frame)], timeout).await
}

/// Like [`call`], for a request frame the caller has already encoded as consecutive byte
/// chunks (for example a small head and a large payload that must not be copied: quinn keeps
/// references to the chunks until they are acknowledged, it does not copy them). The chunks
/// must together be exactly one frame of an `R` request.
pub async fn call_encoded<R: Rpc>(
    conn: &quinn::Connection,
    mut frame: Vec<Bytes>,
    timeout: Duration,
) -> Result<R::Response, CallError> {
    let addr = conn.remote_address().to_string();
    let io = |e: String| CallError::Io {
        addr: addr.clone(),
        reason: e,
    };
    let fut = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| io(e.to_string()))?;
        send.write_all_chunks(&mut frame)
            .await
            .map_err(|e| io(e.to_string()))?;
        send.finish().map_err(|e| io(e.to_string()))?;
        let body = read_frame_bytes(&mut recv, R::RESPONSE_LIMIT)
            .await
            .map_err(io)?;
        let answer: Result<R::Response, WireError> =
            wire::decode_body(&body).map_err(|e| CallError::Frame {
                addr: addr.clone(),
                source: e,
            })?;
        answer.map_err(|error| CallError::Remote {
            addr: addr.clone(),
            rpc: R::NAME,
            error,
        })
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(CallError::Timeout {
            addr: addr.clone(),
            rpc: R::NAME,
            timeout,
        }),
    }
}

/// A peer as the pool knows it: (address, TLS server name).
type PeerKey = (String, String);

/// One connection per peer address, reused by every call, re-dialled when it dies.
#[derive(Clone)]
pub struct ConnPool {
    endpoint: quinn::Endpoint,
    conns: Arc<Mutex<HashMap<PeerKey, quinn::Connection>>>,
    /// One dial lock per peer: a burst of calls to a new peer makes one connection, and a
    /// peer that takes the whole connect timeout to fail delays no dial to any other peer.
    dial_locks: Arc<Mutex<HashMap<PeerKey, Arc<tokio::sync::Mutex<()>>>>>,
}

impl std::fmt::Debug for ConnPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnPool")
    }
}

impl ConnPool {
    /// A pool over an endpoint.
    pub fn new(endpoint: quinn::Endpoint) -> Self {
        Self {
            endpoint,
            conns: Arc::default(),
            dial_locks: Arc::default(),
        }
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &quinn::Endpoint {
        &self.endpoint
    }

    fn cached(&self, key: &(String, String)) -> Option<quinn::Connection> {
        let map = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key).filter(|c| c.close_reason().is_none()).cloned()
    }

    /// A live connection to `addr` presenting `server_name`.
    pub async fn get(&self, addr: &str, server_name: &str) -> Result<quinn::Connection, CallError> {
        let key = (addr.to_string(), server_name.to_string());
        if let Some(c) = self.cached(&key) {
            return Ok(c);
        }
        let dial_lock = self
            .dial_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_default()
            .clone();
        let _g = dial_lock.lock().await;
        if let Some(c) = self.cached(&key) {
            return Ok(c);
        }
        let c = connect(&self.endpoint, addr, server_name).await?;
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, c.clone());
        Ok(c)
    }

    /// Forget a connection (after an error), so the next call re-dials.
    pub fn forget(&self, addr: &str, server_name: &str) {
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(addr.to_string(), server_name.to_string()));
    }

    /// Call through the pool; an I/O failure drops the cached connection.
    pub async fn call<R: Rpc>(
        &self,
        addr: &str,
        server_name: &str,
        req: R,
        timeout: Duration,
    ) -> Result<R::Response, CallError> {
        let conn = self.get(addr, server_name).await?;
        let r = call(&conn, req, timeout).await;
        if matches!(r, Err(CallError::Io { .. } | CallError::Timeout { .. })) {
            self.forget(addr, server_name);
        }
        r
    }

    /// [`call_encoded`] through the pool; an I/O failure drops the cached connection.
    pub async fn call_encoded<R: Rpc>(
        &self,
        addr: &str,
        server_name: &str,
        frame: Vec<Bytes>,
        timeout: Duration,
    ) -> Result<R::Response, CallError> {
        let conn = self.get(addr, server_name).await?;
        let r = call_encoded::<R>(&conn, frame, timeout).await;
        if matches!(r, Err(CallError::Io { .. } | CallError::Timeout { .. })) {
            self.forget(addr, server_name);
        }
        r
    }

    /// Close every connection.
    pub fn close_all(&self) {
        let mut map = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        for (_, c) in map.drain() {
            c.close(0u32.into(), b"closing");
        }
    }
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    /// Remote address.
    pub addr: SocketAddr,
    /// Fingerprint of the client certificate, if one was presented.
    pub fingerprint: Option<CertFingerprint>,
}

impl Peer {
    /// Read the peer of an established connection.
    pub fn of(conn: &quinn::Connection) -> Self {
        let fingerprint = conn
            .peer_identity()
            .and_then(|any| {
                any.downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
                    .ok()
            })
            .and_then(|certs| certs.first().map(|c| CertFingerprint::of_der(c)));
        Peer {
            addr: conn.remote_address(),
            fingerprint,
        }
    }
}

/// A request handler for one service.
pub trait Service: Send + Sync + 'static {
    /// The service's dispatch enum.
    type Request: DeserializeOwned + Send;
    /// Largest request frame accepted.
    const REQUEST_LIMIT: u32 = MAX_FRAME_BYTES;
    /// Decode a request body. The default copies payload bytes out of `body`; a service whose
    /// requests carry large payloads can override it to move them out of `body` instead.
    fn decode(body: Vec<u8>) -> Result<Self::Request, FrameError> {
        wire::decode_body(&body)
    }
    /// Handle one request and return the encoded answer (see [`respond`]).
    fn handle(&self, peer: Peer, req: Self::Request) -> impl Future<Output = Vec<u8>> + Send;
}

/// Encode an answer frame.
pub fn respond<T: Serialize>(r: &Result<T, WireError>) -> Vec<u8> {
    wire::encode_frame(r)
}

/// Accept connections until `shutdown` fires, serving each stream with `service`.
pub async fn serve<S: Service>(
    endpoint: quinn::Endpoint,
    service: Arc<S>,
    shutdown: CancellationToken,
) {
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => i,
            _ = shutdown.cancelled() => break,
        };
        let Some(incoming) = incoming else { break };
        let service = service.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    debug!(error = %e, "handshake failed");
                    return;
                }
            };
            let peer = Peer::of(&conn);
            let span = info_span!("conn", peer = %peer.addr);
            serve_connection(conn, peer, service, shutdown)
                .instrument(span)
                .await;
        });
    }
    endpoint.close(0u32.into(), b"shutdown");
}

async fn serve_connection<S: Service>(
    conn: quinn::Connection,
    peer: Peer,
    service: Arc<S>,
    shutdown: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            s = conn.accept_bi() => s,
            _ = shutdown.cancelled() => break,
        };
        let (mut send, mut recv) = match stream {
            Ok(s) => s,
            Err(e) => {
                debug!(error = %e, "connection ended");
                break;
            }
        };
        let service = service.clone();
        tokio::spawn(
            async move {
                let answer = match read_frame_bytes(&mut recv, S::REQUEST_LIMIT).await {
                    Ok(body) => match S::decode(body) {
                        Ok(req) => service.handle(peer, req).await,
                        Err(e) => {
                            warn!(error = %e, "malformed request");
                            respond::<()>(&Err(e.into()))
                        }
                    },
                    Err(e) => {
                        warn!(error = %e, "unreadable request");
                        respond::<()>(&Err(WireError::new(ErrorCode::BadRequest, e)))
                    }
                };
                // Handing quinn the Vec as `Bytes` moves it instead of copying it.
                if send.write_chunk(Bytes::from(answer)).await.is_ok() {
                    let _ = send.finish();
                    // Wait until the peer has the answer, so dropping the stream cannot
                    // reset it before delivery.
                    let _ = send.stopped().await;
                }
            }
            .in_current_span(),
        );
    }
}
