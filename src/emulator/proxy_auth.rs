//! Authentication where the proxy terminates TLS, as Neon's proxy does: it checks the client's
//! SCRAM proof itself (with channel binding to its own TLS session when the client asks), then
//! logs in to the backing server with the role's password and hands the server's greeting
//! (`AuthenticationOk` … `ReadyForQuery`) to the client.
//!
//! Plain connections never come here: their SCRAM exchange is relayed to the backing server.

use std::collections::HashMap;
use std::sync::Mutex as StdMutex;

use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::proxy::{Backend, Startup};
use super::scram::{self, Verifier};

/// Longest message accepted from a client before it is authenticated.
pub const MAX_AUTH_MESSAGE: usize = 10_000;
/// Longest message accepted from the backing server during its greeting.
const MAX_GREETING_MESSAGE: usize = 1 << 20;

const AUTH_OK: u32 = 0;
const AUTH_CLEARTEXT: u32 = 3;
const AUTH_MD5: u32 = 5;
const AUTH_SASL: u32 = 10;
const AUTH_SASL_CONTINUE: u32 = 11;
const AUTH_SASL_FINAL: u32 = 12;

/// Each project's SCRAM verifier, derived once from its role password (4096 PBKDF2 rounds per
/// derivation, so not per connection).
#[derive(Default)]
pub struct Verifiers {
    by_project: StdMutex<HashMap<String, (String, Verifier)>>,
}

impl Verifiers {
    pub fn get(&self, project_id: &str, password: &str) -> Verifier {
        let mut by_project = self
            .by_project
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match by_project.get(project_id) {
            Some((known, verifier)) if known == password => verifier.clone(),
            _ => {
                let verifier = Verifier::new(password);
                by_project.insert(
                    project_id.to_string(),
                    (password.to_string(), verifier.clone()),
                );
                verifier
            }
        }
    }
}

/// One protocol message: its type byte and body.
pub async fn read_message<S: AsyncRead + Unpin>(
    stream: &mut S,
    limit: usize,
) -> std::io::Result<(u8, Vec<u8>)> {
    let tag = stream.read_u8().await?;
    let length = stream.read_u32().await? as usize;
    if !(4..=limit).contains(&length) {
        return Err(std::io::Error::other(format!(
            "invalid message length {length}"
        )));
    }
    let mut body = vec![0u8; length - 4];
    stream.read_exact(&mut body).await?;
    Ok((tag, body))
}

pub fn encode_message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut message = vec![tag];
    message.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    message.extend_from_slice(body);
    message
}

/// An `Authentication*` message with its code and data.
pub fn authentication(code: u32, data: &[u8]) -> Vec<u8> {
    let mut body = code.to_be_bytes().to_vec();
    body.extend_from_slice(data);
    encode_message(b'R', &body)
}

/// `AuthenticationSASL` offering both mechanisms, `-PLUS` first as PostgreSQL does over TLS.
pub fn sasl_offer() -> Vec<u8> {
    let mut data = Vec::new();
    for mechanism in [scram::SCRAM_SHA_256_PLUS, scram::SCRAM_SHA_256] {
        data.extend_from_slice(mechanism.as_bytes());
        data.push(0);
    }
    data.push(0);
    authentication(AUTH_SASL, &data)
}

/// A `SASLInitialResponse` body: mechanism, then its data (length-prefixed, -1 for none).
pub fn parse_sasl_initial(body: &[u8]) -> Result<(String, Vec<u8>), String> {
    let end = body
        .iter()
        .position(|byte| *byte == 0)
        .ok_or("SASL mechanism not terminated")?;
    let mechanism = String::from_utf8(body[..end].to_vec()).map_err(|_| "mechanism not UTF-8")?;
    let rest = &body[end + 1..];
    let length: [u8; 4] = rest
        .get(..4)
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or("SASL data length missing")?;
    let length = i32::from_be_bytes(length);
    let data = if length < 0 {
        Vec::new()
    } else {
        rest.get(4..4 + length as usize)
            .ok_or("SASL data shorter than its length")?
            .to_vec()
    };
    Ok((mechanism, data))
}

/// What logging in to the backing server gave.
pub enum Login {
    /// Authenticated: the connection and the server's greeting from `AuthenticationOk` to
    /// `ReadyForQuery`, for the client.
    Ready(TcpStream, Vec<u8>),
    /// The server refused (a missing database, too many connections): its `ErrorResponse`.
    Refused(Vec<u8>),
}

/// Connect to the backing server and authenticate as the client's role with its password.
pub async fn login(backend: &Backend, startup: &Startup, password: &str) -> std::io::Result<Login> {
    let mut server = TcpStream::connect((backend.host.as_str(), backend.port)).await?;
    server.set_nodelay(true)?;
    server.write_all(&startup.encode()).await?;
    let user = startup.get("user").unwrap_or_default().to_string();
    let mut exchange: Option<ScramSha256> = None;
    loop {
        let (tag, body) = read_message(&mut server, MAX_GREETING_MESSAGE).await?;
        match tag {
            b'E' => return Ok(Login::Refused(encode_message(tag, &body))),
            b'R' => {}
            // Notices before authentication: nothing the client needs.
            _ => continue,
        }
        let code = body
            .get(..4)
            .map(|bytes| u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
            .ok_or_else(|| std::io::Error::other("short authentication message"))?;
        let data = &body[4..];
        match code {
            AUTH_OK => {
                let mut greeting = encode_message(tag, &body);
                loop {
                    let (tag, body) = read_message(&mut server, MAX_GREETING_MESSAGE).await?;
                    if tag == b'E' {
                        return Ok(Login::Refused(encode_message(tag, &body)));
                    }
                    greeting.extend_from_slice(&encode_message(tag, &body));
                    if tag == b'Z' {
                        return Ok(Login::Ready(server, greeting));
                    }
                }
            }
            AUTH_SASL => {
                let offered = data
                    .split(|byte| *byte == 0)
                    .any(|mechanism| mechanism == scram::SCRAM_SHA_256.as_bytes());
                if !offered {
                    return Err(std::io::Error::other(
                        "the backing server offers no SCRAM-SHA-256",
                    ));
                }
                let client = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
                let mut initial = scram::SCRAM_SHA_256.as_bytes().to_vec();
                initial.push(0);
                initial.extend_from_slice(&(client.message().len() as i32).to_be_bytes());
                initial.extend_from_slice(client.message());
                server.write_all(&encode_message(b'p', &initial)).await?;
                exchange = Some(client);
            }
            AUTH_SASL_CONTINUE => {
                let client = exchange
                    .as_mut()
                    .ok_or_else(|| std::io::Error::other("SASL continue before SASL"))?;
                client.update(data)?;
                server
                    .write_all(&encode_message(b'p', client.message()))
                    .await?;
            }
            AUTH_SASL_FINAL => {
                exchange
                    .as_mut()
                    .ok_or_else(|| std::io::Error::other("SASL final before SASL"))?
                    .finish(data)?;
            }
            AUTH_CLEARTEXT => {
                let mut message = password.as_bytes().to_vec();
                message.push(0);
                server.write_all(&encode_message(b'p', &message)).await?;
            }
            AUTH_MD5 => {
                let salt: [u8; 4] = data
                    .get(..4)
                    .and_then(|bytes| bytes.try_into().ok())
                    .ok_or_else(|| std::io::Error::other("MD5 request without salt"))?;
                let mut message = postgres_protocol::authentication::md5_hash(
                    user.as_bytes(),
                    password.as_bytes(),
                    salt,
                )
                .into_bytes();
                message.push(0);
                server.write_all(&encode_message(b'p', &message)).await?;
            }
            other => {
                return Err(std::io::Error::other(format!(
                    "the backing server asks for authentication method {other}"
                )));
            }
        }
    }
}

/// `AuthenticationSASLContinue` / `AuthenticationSASLFinal` carrying a server message.
pub fn sasl_continue(message: &str) -> Vec<u8> {
    authentication(AUTH_SASL_CONTINUE, message.as_bytes())
}

pub fn sasl_final(message: &str) -> Vec<u8> {
    authentication(AUTH_SASL_FINAL, message.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sasl_initial_response_parses() {
        let mut body = b"SCRAM-SHA-256-PLUS\0".to_vec();
        body.extend_from_slice(&5i32.to_be_bytes());
        body.extend_from_slice(b"p=x,,");
        assert_eq!(
            parse_sasl_initial(&body),
            Ok(("SCRAM-SHA-256-PLUS".into(), b"p=x,,".to_vec()))
        );
        assert!(parse_sasl_initial(b"SCRAM").is_err());
        let mut short = b"SCRAM-SHA-256\0".to_vec();
        short.extend_from_slice(&9i32.to_be_bytes());
        assert!(parse_sasl_initial(&short).is_err());
    }

    #[test]
    fn verifiers_are_derived_once_per_password() {
        let verifiers = Verifiers::default();
        // Every derivation draws a fresh salt, so equal verifiers mean a cached one.
        let first = verifiers.get("p-1", "a");
        assert_eq!(verifiers.get("p-1", "a"), first);
        assert_ne!(verifiers.get("p-1", "b"), first);
        assert_ne!(verifiers.get("p-2", "a"), first);
    }
}
