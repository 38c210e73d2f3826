//! The emulator's PostgreSQL wire-protocol proxy, in the place of Neon's: one loopback port for
//! every endpoint. It reads a client's startup message, finds the endpoint named in its options
//! (`options=endpoint%3D<endpoint_id>`, the way Neon's proxy accepts clients without SNI), waits
//! for the endpoint's compute ([`super::compute`]), then relays bytes to the branch's database on
//! the backing server, charging the configured round-trip time.
//!
//! **Invariant:** on a plain connection authentication is the backing server's: the proxy never
//! sees a password, it relays the SCRAM exchange byte for byte. On a TLS connection the proxy
//! authenticates the client itself, as Neon's does ([`super::proxy_auth`]): channel binding
//! (`SCRAM-SHA-256-PLUS`) can only be checked by the end of the TLS session it binds to.
//! **Invariant:** a connection reaches only its endpoint's branch database; the names the API
//! reports (`neondb`, `neondb_owner`) are mapped to the physical ones, other databases are refused.
//! **Invariant:** latency is a delay line, not a sleep per message: every chunk is held for half
//! the round-trip time in its direction, so a pipelined batch pays one round trip and a loop of
//! queries pays one per query, as on a real network. Round trips the proxy answers itself
//! (`SSLRequest`, the TLS handshake, SCRAM on TLS) are charged and counted as set-up.
//!
//! TLS: a self-signed certificate made at start ([`super::tls`]); an SNI host
//! `<endpoint_id>.localhost` names the endpoint as Neon's proxy reads it.
//! Deliberately absent: GSS encryption, the `endpoint=…;password` form.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use super::compute::Session;
use super::model::EndpointRecord;
use super::service::Emulator;
use super::{proxy_auth, scram, tls};

/// Neon's proxy, word for word (docs `connect/connection-errors`).
pub const MISSING_ENDPOINT_MESSAGE: &str = "The endpoint ID is not specified. Either please upgrade the postgres client library (libpq) for SNI support or pass the endpoint ID (first part of the domain name) as a parameter: '?options=endpoint%3D<endpoint-id>'. See more at https://neon.tech/sni";
/// Neon's proxy for an endpoint id it does not know.
pub const UNKNOWN_ENDPOINT_MESSAGE: &str = "The requested endpoint could not be found, or you don't have access to it. Please check the provided ID and try again.";

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;
const PROTOCOL_MAJOR_3: u32 = 3;
/// PostgreSQL's own limit on a startup packet.
const MAX_STARTUP_LENGTH: usize = 10_000;
const RELAY_BUFFER: usize = 16 * 1024;
/// Chunks in flight per direction on a delayed link (backpressure beyond that).
const DELAY_LINE_CHUNKS: usize = 256;

/// Where the proxy sends connections: the backing server.
#[derive(Debug, Clone)]
pub struct Backend {
    pub host: String,
    pub port: u16,
}

/// What the proxy needs to terminate TLS and authenticate clients itself.
pub struct Security {
    pub tls: tls::ProxyTls,
    verifiers: proxy_auth::Verifiers,
}

impl Security {
    pub fn new(tls: tls::ProxyTls) -> Security {
        Security {
            tls,
            verifiers: proxy_auth::Verifiers::default(),
        }
    }
}

/// Accept connections until the task is aborted (the emulator's stop does).
pub async fn serve(
    listener: TcpListener,
    emulator: Arc<Emulator>,
    backend: Backend,
    security: Arc<Security>,
) {
    loop {
        let (client, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!("the emulator's proxy cannot accept a connection: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let emulator = emulator.clone();
        let backend = backend.clone();
        let security = security.clone();
        tokio::spawn(async move {
            if let Err(error) = handle(client, &emulator, &backend, &security).await {
                tracing::debug!("proxy connection ended: {error}");
            }
        });
    }
}

/// A client's startup message, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Startup {
    pub protocol: u32,
    pub parameters: Vec<(String, String)>,
}

impl Startup {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.parameters
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    fn set(&mut self, name: &str, value: Option<String>) {
        self.parameters.retain(|(key, _)| key != name);
        if let Some(value) = value {
            self.parameters.push((name.to_string(), value));
        }
    }

    /// The message as the backing server receives it (length, protocol, pairs, terminator).
    pub fn encode(&self) -> Vec<u8> {
        let mut body = self.protocol.to_be_bytes().to_vec();
        for (key, value) in &self.parameters {
            body.extend_from_slice(key.as_bytes());
            body.push(0);
            body.extend_from_slice(value.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut message = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        message.extend_from_slice(&body);
        message
    }
}

/// Parse a startup message's body (after its length): protocol, then `key\0value\0` pairs.
pub fn parse_startup(body: &[u8]) -> Result<Startup, String> {
    let protocol_bytes: [u8; 4] = body
        .get(..4)
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or("startup message too short")?;
    let protocol = u32::from_be_bytes(protocol_bytes);
    let mut parameters = Vec::new();
    let mut fields = body[4..].split(|byte| *byte == 0);
    loop {
        let key = fields.next().ok_or("startup message not terminated")?;
        if key.is_empty() {
            break;
        }
        let value = fields.next().ok_or("startup parameter without a value")?;
        let text = |bytes: &[u8]| {
            String::from_utf8(bytes.to_vec()).map_err(|_| "startup parameter is not UTF-8")
        };
        parameters.push((text(key)?, text(value)?));
    }
    Ok(Startup {
        protocol,
        parameters,
    })
}

/// Take `endpoint=<id>` (Neon also reads `project=<id>`) out of the `options` parameter; the
/// rest (`-c name=value` switches) goes on to the server.
pub fn split_endpoint_option(options: &str) -> (Option<String>, String) {
    let mut endpoint = None;
    let mut rest = Vec::new();
    for token in options.split_ascii_whitespace() {
        match token
            .strip_prefix("endpoint=")
            .or_else(|| token.strip_prefix("project="))
        {
            Some(id) if !id.is_empty() => endpoint = Some(id.to_string()),
            _ => rest.push(token),
        }
    }
    (endpoint, rest.join(" "))
}

/// An `ErrorResponse` message.
pub fn error_response(severity: &str, code: &str, message: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (field, value) in [
        (b'S', severity),
        (b'V', severity),
        (b'C', code),
        (b'M', message),
    ] {
        body.push(field);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut message_bytes = vec![b'E'];
    message_bytes.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    message_bytes.extend_from_slice(&body);
    message_bytes
}

/// Where one endpoint's connections go.
struct Route {
    endpoint: EndpointRecord,
    project_id: String,
    physical_database: String,
    physical_role: String,
    database_name: String,
    role_name: String,
    /// The role's password: only the TLS path uses it (it authenticates the client itself and
    /// then logs in to the backing server).
    role_password: String,
}

fn find_route(emulator: &Emulator, endpoint_id: &str) -> Option<Route> {
    let state = emulator.lock_state();
    state.projects.values().find_map(|entry| {
        let document = &entry.document;
        let endpoint = document
            .endpoints
            .iter()
            .find(|endpoint| endpoint.id == endpoint_id)?;
        let branch = document.branch(&endpoint.branch_id)?;
        Some(Route {
            endpoint: endpoint.clone(),
            project_id: document.project.id.clone(),
            physical_database: branch.physical_database.clone(),
            physical_role: document.project.physical_role.clone(),
            database_name: document.project.database_name.clone(),
            role_name: document.project.role_name.clone(),
            role_password: document.project.role_password.clone(),
        })
    })
}

/// Why the proxy refuses a client before any server is involved: SQLSTATE and message.
struct Refusal {
    code: &'static str,
    message: String,
}

fn refusal(code: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        code,
        message: message.into(),
    }
}

/// Find the endpoint the client names (SNI and/or `options`) and rewrite its startup message
/// for the backing server: the API's names mapped to the physical ones, the endpoint option
/// taken out.
fn route_startup(
    emulator: &Emulator,
    startup: Startup,
    sni_endpoint: Option<String>,
) -> Result<(Route, Startup), Refusal> {
    let (option_endpoint, other_options) =
        split_endpoint_option(startup.get("options").unwrap_or_default());
    let endpoint_id = tls::choose_endpoint(sni_endpoint, option_endpoint)
        .map_err(|message| refusal("08004", message))?
        .ok_or_else(|| refusal("08004", MISSING_ENDPOINT_MESSAGE))?;
    let route = find_route(emulator, tls::lookup_id(&endpoint_id))
        .ok_or_else(|| refusal("08004", UNKNOWN_ENDPOINT_MESSAGE))?;
    let mut startup = startup;
    let user = startup.get("user").unwrap_or_default().to_string();
    let database = startup.get("database").unwrap_or(user.as_str()).to_string();
    let database = if database == route.database_name {
        route.physical_database.clone()
    } else {
        database
    };
    if database != route.physical_database {
        return Err(refusal(
            "3D000",
            format!("database \"{database}\" does not exist"),
        ));
    }
    if user == route.role_name {
        startup.set("user", Some(route.physical_role.clone()));
    }
    startup.set("database", Some(database));
    startup.set(
        "options",
        (!other_options.is_empty()).then_some(other_options),
    );
    Ok((route, startup))
}

async fn read_startup_packet<S: AsyncRead + Unpin>(client: &mut S) -> std::io::Result<Vec<u8>> {
    let length = client.read_u32().await? as usize;
    if !(8..=MAX_STARTUP_LENGTH).contains(&length) {
        return Err(std::io::Error::other(format!(
            "invalid startup packet length {length}"
        )));
    }
    let mut body = vec![0u8; length - 4];
    client.read_exact(&mut body).await?;
    Ok(body)
}

/// One round trip the proxy answers itself: the client waits the full round-trip time.
async fn answer<S: AsyncWrite + Unpin>(
    client: &mut S,
    link: &Link,
    bytes: &[u8],
) -> std::io::Result<()> {
    tokio::time::sleep(link.round_trip()).await;
    client.write_all(bytes).await
}

async fn refuse<S: AsyncWrite + Unpin>(
    client: &mut S,
    link: &Link,
    code: &str,
    message: &str,
) -> std::io::Result<()> {
    answer(client, link, &error_response("FATAL", code, message)).await?;
    client.shutdown().await
}

/// The key is the backing server's (its BackendKeyData passed through): forward it.
async fn forward_cancel(body: &[u8], backend: &Backend) -> std::io::Result<()> {
    let mut server = TcpStream::connect((backend.host.as_str(), backend.port)).await?;
    let mut message = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    message.extend_from_slice(body);
    server.write_all(&message).await
}

fn unsupported_protocol(code: u32) -> String {
    format!(
        "unsupported frontend protocol {}.{}",
        code >> 16,
        code & 0xffff
    )
}

async fn handle(
    mut client: TcpStream,
    emulator: &Arc<Emulator>,
    backend: &Backend,
    security: &Security,
) -> std::io::Result<()> {
    client.set_nodelay(true)?;
    let link = Link::new(&emulator.computes.config);
    let mut handshakes = 0u64;
    let startup = loop {
        let body = read_startup_packet(&mut client).await?;
        let code = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
        match code {
            SSL_REQUEST => {
                handshakes += 1;
                answer(&mut client, &link, b"S").await?;
                return handle_tls(client, emulator, backend, security, &link, handshakes).await;
            }
            GSSENC_REQUEST => {
                handshakes += 1;
                answer(&mut client, &link, b"N").await?;
            }
            CANCEL_REQUEST => return forward_cancel(&body, backend).await,
            _ if code >> 16 == PROTOCOL_MAJOR_3 => {
                break parse_startup(&body).map_err(std::io::Error::other)?;
            }
            _ => return refuse(&mut client, &link, "08P01", &unsupported_protocol(code)).await,
        }
    };
    let (route, startup) = match route_startup(emulator, startup, None) {
        Ok(routed) => routed,
        Err(refused) => return refuse(&mut client, &link, refused.code, &refused.message).await,
    };

    let session = emulator.computes.open_session(&route.endpoint);
    for _ in 0..handshakes {
        session.count_round_trip();
    }
    // The startup message travels to the compute, which may first have to wake up.
    tokio::time::sleep(link.one_way() + session.wait()).await;
    session.client_sent();
    let mut server = TcpStream::connect((backend.host.as_str(), backend.port)).await?;
    server.set_nodelay(true)?;
    server.write_all(&startup.encode()).await?;

    let (client_read, client_write) = client.into_split();
    relay(client_read, client_write, server, &link, &session).await
}

/// A client that asked for TLS: the handshake (its round trips counted and charged as
/// connection set-up), then the endpoint from SNI and/or options, then SCRAM with the proxy
/// itself (channel binding when the client asks), then the backing server, then bytes.
async fn handle_tls(
    client: TcpStream,
    emulator: &Arc<Emulator>,
    backend: &Backend,
    security: &Security,
    link: &Link,
    mut set_up_round_trips: u64,
) -> std::io::Result<()> {
    let mut client = security.tls.acceptor.accept(client).await?;
    let (sni, handshake_round_trips) = {
        let (_, connection) = client.get_ref();
        let round_trips = match connection.protocol_version() {
            Some(tokio_rustls::rustls::ProtocolVersion::TLSv1_2) => 2,
            _ => 1,
        };
        (connection.server_name().map(str::to_string), round_trips)
    };
    set_up_round_trips += handshake_round_trips;
    tokio::time::sleep(link.round_trip() * handshake_round_trips as u32).await;

    let body = read_startup_packet(&mut client).await?;
    let code = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    let startup = match code {
        CANCEL_REQUEST => return forward_cancel(&body, backend).await,
        _ if code >> 16 == PROTOCOL_MAJOR_3 => {
            parse_startup(&body).map_err(std::io::Error::other)?
        }
        _ => return refuse(&mut client, link, "08P01", &unsupported_protocol(code)).await,
    };
    let client_user = startup.get("user").unwrap_or_default().to_string();
    let routed = tls::endpoint_from_sni(sni.as_deref())
        .map_err(|message| refusal("08004", message))
        .and_then(|sni_endpoint| route_startup(emulator, startup, sni_endpoint));
    let (route, startup) = match routed {
        Ok(routed) => routed,
        Err(refused) => return refuse(&mut client, link, refused.code, &refused.message).await,
    };
    let auth_failed = format!("password authentication failed for user '{client_user}'");
    if startup.get("user") != Some(route.physical_role.as_str()) {
        return refuse(&mut client, link, "28P01", &auth_failed).await;
    }

    // SCRAM with the proxy: offer, client-first → server-first, client-final → server-final.
    let verifier = security
        .verifiers
        .get(&route.project_id, &route.role_password);
    answer(&mut client, link, &proxy_auth::sasl_offer()).await?;
    set_up_round_trips += 1;
    let (tag, body) = proxy_auth::read_message(&mut client, proxy_auth::MAX_AUTH_MESSAGE).await?;
    let initial = (tag == b'p')
        .then(|| proxy_auth::parse_sasl_initial(&body).ok())
        .flatten();
    let Some((mechanism, client_first)) = initial else {
        return refuse(
            &mut client,
            link,
            "08P01",
            "expected a SASL initial response",
        )
        .await;
    };
    let started = scram::start(
        &verifier,
        &mechanism,
        &client_first,
        Some(&security.tls.certificate_hash),
        true,
    );
    let (exchange, server_first) = match started {
        Ok(started) => started,
        Err(scram::ScramError::Authentication) => {
            return refuse(&mut client, link, "28P01", &auth_failed).await;
        }
        Err(scram::ScramError::Protocol(message)) => {
            return refuse(&mut client, link, "08P01", &format!("SCRAM: {message}")).await;
        }
    };
    answer(&mut client, link, &proxy_auth::sasl_continue(&server_first)).await?;
    set_up_round_trips += 1;
    let (tag, client_final) =
        proxy_auth::read_message(&mut client, proxy_auth::MAX_AUTH_MESSAGE).await?;
    let server_final = match (tag, exchange.finish(&client_final)) {
        (b'p', Ok(server_final)) => server_final,
        (_, Err(scram::ScramError::Protocol(message))) => {
            return refuse(&mut client, link, "08P01", &format!("SCRAM: {message}")).await;
        }
        _ => return refuse(&mut client, link, "28P01", &auth_failed).await,
    };

    // Authenticated: now the compute (woken if it sleeps), as Neon's proxy does.
    let session = emulator.computes.open_session(&route.endpoint);
    for _ in 0..=set_up_round_trips {
        session.count_round_trip();
    }
    tokio::time::sleep(link.one_way() + session.wait()).await;
    let login = proxy_auth::login(backend, &startup, &route.role_password).await?;
    tokio::time::sleep(link.one_way()).await;
    let (server, greeting) = match login {
        proxy_auth::Login::Ready(server, greeting) => (server, greeting),
        proxy_auth::Login::Refused(error) => {
            client.write_all(&error).await?;
            return client.shutdown().await;
        }
    };
    let mut reply = proxy_auth::sasl_final(&server_final);
    reply.extend_from_slice(&greeting);
    client.write_all(&reply).await?;

    let (client_read, client_write) = tokio::io::split(client);
    relay(client_read, client_write, server, link, &session).await
}

/// Relay bytes both ways until either side closes or the endpoint is suspended, counting round
/// trips against the session.
async fn relay<R, W>(
    client_read: R,
    client_write: W,
    server: TcpStream,
    link: &Link,
    session: &Session,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (server_read, server_write) = server.into_split();
    let upstream = pump(client_read, server_write, link, || session.client_sent());
    let downstream = pump(server_read, client_write, link, || {
        session.server_sent();
    });
    let relay = async { tokio::try_join!(upstream, downstream).map(|_| ()) };
    let mut suspended = session.suspended_signal();
    tokio::select! {
        result = relay => result,
        _ = suspended.changed() => Ok(()),
    }
}

/// The network between client and compute: half the round-trip time (plus jitter) each way.
pub struct Link {
    round_trip: Duration,
    jitter: Duration,
}

impl Link {
    fn new(config: &super::compute::ComputeConfig) -> Link {
        Link {
            round_trip: config.round_trip,
            jitter: config.round_trip_jitter,
        }
    }

    fn is_instant(&self) -> bool {
        self.round_trip.is_zero() && self.jitter.is_zero()
    }

    fn one_way(&self) -> Duration {
        let jitter = if self.jitter.is_zero() {
            Duration::ZERO
        } else {
            self.jitter.mul_f64(rand::random::<f64>())
        };
        (self.round_trip + jitter) / 2
    }

    fn round_trip(&self) -> Duration {
        self.one_way() * 2
    }
}

/// Copy `from` to `to`, calling `on_chunk` as each chunk is read; on a delayed link each chunk
/// is delivered one one-way delay after it was read (never before an earlier one).
async fn pump<R, W>(mut from: R, mut to: W, link: &Link, on_chunk: impl Fn()) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if link.is_instant() {
        let mut buffer = vec![0u8; RELAY_BUFFER];
        loop {
            let read = from.read(&mut buffer).await?;
            if read == 0 {
                return to.shutdown().await;
            }
            on_chunk();
            to.write_all(&buffer[..read]).await?;
        }
    }
    let (sender, mut receiver) =
        tokio::sync::mpsc::channel::<(Instant, Vec<u8>)>(DELAY_LINE_CHUNKS);
    let reader = async move {
        let mut last_due = Instant::now();
        loop {
            let mut buffer = vec![0u8; RELAY_BUFFER];
            let read = from.read(&mut buffer).await?;
            if read == 0 {
                return Ok::<(), std::io::Error>(());
            }
            on_chunk();
            buffer.truncate(read);
            last_due = last_due.max(Instant::now() + link.one_way());
            if sender.send((last_due, buffer)).await.is_err() {
                return Ok(());
            }
        }
    };
    let writer = async {
        while let Some((due, bytes)) = receiver.recv().await {
            tokio::time::sleep_until(due).await;
            to.write_all(&bytes).await?;
        }
        to.shutdown().await
    };
    tokio::try_join!(reader, writer).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_startup_message_round_trips_through_parse_and_encode() {
        let startup = Startup {
            protocol: 196_608,
            parameters: vec![
                ("user".into(), "neondb_owner".into()),
                ("database".into(), "neondb".into()),
                ("options".into(), "endpoint=ep-a-1 -c search_path=x".into()),
            ],
        };
        let encoded = startup.encode();
        assert_eq!(
            u32::from_be_bytes(encoded[..4].try_into().expect("length")) as usize,
            encoded.len()
        );
        assert_eq!(parse_startup(&encoded[4..]), Ok(startup));
        assert!(parse_startup(&[0, 3, 0, 0, b'u', 0]).is_err());
    }

    #[test]
    fn the_endpoint_option_is_taken_out_and_the_rest_kept() {
        assert_eq!(
            split_endpoint_option("endpoint=ep-cool-1 -c search_path=x"),
            (Some("ep-cool-1".into()), "-c search_path=x".into())
        );
        assert_eq!(
            split_endpoint_option("-c statement_timeout=5s"),
            (None, "-c statement_timeout=5s".into())
        );
        assert_eq!(split_endpoint_option(""), (None, String::new()));
        assert_eq!(
            split_endpoint_option("project=ep-old-2"),
            (Some("ep-old-2".into()), String::new())
        );
    }

    #[test]
    fn error_responses_carry_severity_code_and_message() {
        let bytes = error_response("FATAL", "08004", "nope");
        assert_eq!(bytes[0], b'E');
        let length = u32::from_be_bytes(bytes[1..5].try_into().expect("length")) as usize;
        assert_eq!(length + 1, bytes.len());
        let text = String::from_utf8_lossy(&bytes[5..]);
        assert!(text.contains("SFATAL\0VFATAL\0C08004\0Mnope\0"), "{text}");
    }
}
