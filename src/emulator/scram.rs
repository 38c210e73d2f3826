//! The server side of SCRAM-SHA-256 and SCRAM-SHA-256-PLUS (RFC 5802, RFC 7677, channel binding
//! `tls-server-end-point` of RFC 5929), as PostgreSQL and Neon's proxy speak it. The proxy uses
//! it on TLS connections: channel binding ties the client's proof to the proxy's own TLS
//! session, so only the proxy can check it (the backing server never sees that session).
//!
//! Pure: messages in, messages out; the proxy does the I/O. The password never leaves the
//! [`Verifier`], which keeps only the derived keys.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
pub const SCRAM_SHA_256_PLUS: &str = "SCRAM-SHA-256-PLUS";
const CHANNEL_BINDING_TYPE: &str = "tls-server-end-point";

/// What the server keeps of a password: salt, iterations and the two derived keys.
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    salt: Vec<u8>,
    iterations: u32,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier(..)")
    }
}

impl Verifier {
    /// A verifier with a fresh salt, the same PostgreSQL stores for `password`.
    pub fn new(password: &str) -> Verifier {
        let text = postgres_protocol::password::scram_sha_256(password.as_bytes());
        Verifier::parse(&text).expect("postgres-protocol writes a well-formed verifier")
    }

    /// Parse PostgreSQL's `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
    pub fn parse(text: &str) -> Option<Verifier> {
        let rest = text.strip_prefix("SCRAM-SHA-256$")?;
        let (parameters, keys) = rest.split_once('$')?;
        let (iterations, salt) = parameters.split_once(':')?;
        let (stored_key, server_key) = keys.split_once(':')?;
        Some(Verifier {
            salt: STANDARD.decode(salt).ok()?,
            iterations: iterations.parse().ok()?,
            stored_key: STANDARD.decode(stored_key).ok()?,
            server_key: STANDARD.decode(server_key).ok()?,
        })
    }
}

/// Why an exchange failed; the proxy turns it into PostgreSQL's error for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScramError {
    /// A message that does not follow the protocol (SQLSTATE 08P01).
    Protocol(String),
    /// The proof or the channel binding did not match (SQLSTATE 28P01).
    Authentication,
}

fn protocol(message: &str) -> ScramError {
    ScramError::Protocol(message.to_string())
}

/// An exchange after the client's first message, waiting for its final one.
pub struct ServerExchange {
    verifier: Verifier,
    /// The channel-binding data the client must echo: its gs2 header and, for `-PLUS`, the
    /// certificate hash.
    expected_binding: Vec<u8>,
    nonce: String,
    client_first_bare: String,
    server_first: String,
}

/// The client chose `mechanism` and sent `client_first`. `certificate_hash` is the
/// `tls-server-end-point` data of the session (None on a plain connection); `plus_offered`
/// says whether `-PLUS` was in the list the server sent, which decides how a client that says
/// "I could bind but you cannot" (`y`) is answered (RFC 5802 §6: a downgrade when offered).
pub fn start(
    verifier: &Verifier,
    mechanism: &str,
    client_first: &[u8],
    certificate_hash: Option<&[u8]>,
    plus_offered: bool,
) -> Result<(ServerExchange, String), ScramError> {
    let text = std::str::from_utf8(client_first).map_err(|_| protocol("not UTF-8"))?;
    let mut parts = text.splitn(3, ',');
    let binding_flag = parts.next().ok_or_else(|| protocol("empty message"))?;
    let authzid = parts.next().ok_or_else(|| protocol("no gs2 header"))?;
    let client_first_bare = parts
        .next()
        .ok_or_else(|| protocol("no client-first-bare"))?;
    if !authzid.is_empty() {
        return Err(protocol("authorization identities are not supported"));
    }
    let gs2_header = format!("{binding_flag},,");
    let mut expected_binding = gs2_header.as_bytes().to_vec();
    match (mechanism, binding_flag) {
        (SCRAM_SHA_256_PLUS, flag) => {
            if flag != format!("p={CHANNEL_BINDING_TYPE}") {
                return Err(protocol("unsupported channel binding type"));
            }
            let hash = certificate_hash
                .ok_or_else(|| protocol("channel binding needs a TLS connection"))?;
            expected_binding.extend_from_slice(hash);
        }
        (SCRAM_SHA_256, "n") => {}
        (SCRAM_SHA_256, "y") if !plus_offered => {}
        (SCRAM_SHA_256, "y") => return Err(ScramError::Authentication),
        (SCRAM_SHA_256, _) => return Err(protocol("channel binding without -PLUS")),
        _ => return Err(protocol("unsupported SASL mechanism")),
    }
    let client_nonce = client_first_bare
        .split(',')
        .find_map(|attribute| attribute.strip_prefix("r="))
        .filter(|nonce| !nonce.is_empty())
        .ok_or_else(|| protocol("no client nonce"))?;
    let server_nonce: String = {
        let bytes: [u8; 18] = rand::random();
        STANDARD.encode(bytes)
    };
    let nonce = format!("{client_nonce}{server_nonce}");
    let server_first = format!(
        "r={nonce},s={},i={}",
        STANDARD.encode(&verifier.salt),
        verifier.iterations
    );
    Ok((
        ServerExchange {
            verifier: verifier.clone(),
            expected_binding,
            nonce,
            client_first_bare: client_first_bare.to_string(),
            server_first: server_first.clone(),
        },
        server_first,
    ))
}

fn hmac(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts every key length");
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

impl ServerExchange {
    /// Check the client's final message; on success the server-final message (`v=…`).
    pub fn finish(self, client_final: &[u8]) -> Result<String, ScramError> {
        let text = std::str::from_utf8(client_final).map_err(|_| protocol("not UTF-8"))?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or_else(|| protocol("no proof"))?;
        let mut binding = None;
        let mut nonce = None;
        for attribute in without_proof.split(',') {
            if let Some(value) = attribute.strip_prefix("c=") {
                binding = Some(value);
            } else if let Some(value) = attribute.strip_prefix("r=") {
                nonce = Some(value);
            }
        }
        let binding = STANDARD
            .decode(binding.ok_or_else(|| protocol("no channel binding attribute"))?)
            .map_err(|_| protocol("channel binding is not base64"))?;
        if nonce != Some(self.nonce.as_str()) {
            return Err(protocol("nonce mismatch"));
        }
        if binding != self.expected_binding {
            return Err(ScramError::Authentication);
        }
        let proof = STANDARD
            .decode(proof)
            .map_err(|_| protocol("proof is not base64"))?;
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let client_signature = hmac(&self.verifier.stored_key, auth_message.as_bytes());
        if proof.len() != client_signature.len() {
            return Err(ScramError::Authentication);
        }
        let client_key: Vec<u8> = proof
            .iter()
            .zip(&client_signature)
            .map(|(proof, signature)| proof ^ signature)
            .collect();
        if Sha256::digest(&client_key).as_slice() != self.verifier.stored_key.as_slice() {
            return Err(ScramError::Authentication);
        }
        let server_signature = hmac(&self.verifier.server_key, auth_message.as_bytes());
        Ok(format!("v={}", STANDARD.encode(server_signature)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    fn exchange(
        password: &str,
        mechanism: &str,
        client_binding: ChannelBinding,
        server_hash: Option<&[u8]>,
    ) -> Result<(), ScramError> {
        let verifier = Verifier::new("s3cret");
        let mut client = ScramSha256::new(password.as_bytes(), client_binding);
        let (exchange, server_first) =
            start(&verifier, mechanism, client.message(), server_hash, true)?;
        client
            .update(server_first.as_bytes())
            .expect("the client accepts server-first");
        let server_final = exchange.finish(client.message())?;
        client
            .finish(server_final.as_bytes())
            .expect("the client verifies the server's signature");
        Ok(())
    }

    #[test]
    fn the_right_password_authenticates_with_and_without_channel_binding() {
        let hash = [7u8; 32];
        assert_eq!(
            exchange(
                "s3cret",
                SCRAM_SHA_256_PLUS,
                ChannelBinding::tls_server_end_point(hash.to_vec()),
                Some(&hash)
            ),
            Ok(())
        );
        assert_eq!(
            exchange(
                "s3cret",
                SCRAM_SHA_256,
                ChannelBinding::unsupported(),
                Some(&hash)
            ),
            Ok(())
        );
    }

    #[test]
    fn a_wrong_password_or_another_tls_session_is_refused() {
        let hash = [7u8; 32];
        assert_eq!(
            exchange(
                "wrong",
                SCRAM_SHA_256_PLUS,
                ChannelBinding::tls_server_end_point(hash.to_vec()),
                Some(&hash)
            ),
            Err(ScramError::Authentication)
        );
        // A man in the middle terminates TLS with its own certificate: the hashes differ.
        assert_eq!(
            exchange(
                "s3cret",
                SCRAM_SHA_256_PLUS,
                ChannelBinding::tls_server_end_point(vec![9u8; 32]),
                Some(&hash)
            ),
            Err(ScramError::Authentication)
        );
        // "I could bind, you cannot" while -PLUS was offered: a downgrade.
        assert_eq!(
            exchange(
                "s3cret",
                SCRAM_SHA_256,
                ChannelBinding::unrequested(),
                Some(&hash)
            ),
            Err(ScramError::Authentication)
        );
    }

    #[test]
    fn postgres_verifiers_parse() {
        let verifier = Verifier::parse(
            "SCRAM-SHA-256$4096:c2FsdA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        )
        .expect("parses");
        assert_eq!(verifier.iterations, 4096);
        assert_eq!(verifier.salt, b"salt");
        assert!(Verifier::parse("md5abc").is_none());
    }
}
