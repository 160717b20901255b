//! SCRAM-SHA-256 (RFC 5802, RFC 7677), the server side, as PostgreSQL speaks it.
//!
//! The password is salted and stretched once, at start, into the two keys the exchange
//! needs (`StoredKey`, `ServerKey`), so a login costs a few hashes and no client can make
//! the server run PBKDF2. The exchange:
//!
//! ```text
//! client-first  n,,n=<ignored>,r=<client nonce>
//! server-first  r=<client nonce><server nonce>,s=<salt>,i=<iterations>
//! client-final  c=biws,r=<both nonces>,p=<proof>
//! server-final  v=<server signature>
//! ```
//!
//! The proof is `ClientKey XOR HMAC(StoredKey, AuthMessage)`; the server recovers
//! `ClientKey` and checks that its hash is `StoredKey`. The user name inside the SCRAM
//! messages is ignored, as PostgreSQL does: the startup packet names the user. An unknown
//! user is checked against keys from a random password nobody knows, so the exchange runs
//! and fails exactly as for a wrong password and does not tell which users exist.
//! Channel binding is not offered (`n` or `y` flags only).

use std::num::NonZeroU32;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ring::digest::{digest, SHA256};
use ring::hmac;
use ring::pbkdf2;
use ring::rand::{SecureRandom, SystemRandom};

/// PBKDF2 iterations, PostgreSQL's default.
pub const ITERATIONS: u32 = 4096;
pub const MECHANISM: &str = "SCRAM-SHA-256";

/// The keys a password stretches into.
struct Keys {
    stored: [u8; 32],
    server: [u8; 32],
}

impl Keys {
    fn derive(password: &str, salt: &[u8]) -> Keys {
        // SASLprep as PostgreSQL and libpq apply it; a password it refuses is used as is.
        let prepared = stringprep::saslprep(password)
            .map(|p| p.into_owned())
            .unwrap_or_else(|_| password.to_owned());
        let mut salted = [0u8; 32];
        let iterations = NonZeroU32::new(ITERATIONS).unwrap_or(NonZeroU32::MIN);
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            iterations,
            salt,
            prepared.as_bytes(),
            &mut salted,
        );
        let key = hmac::Key::new(hmac::HMAC_SHA256, &salted);
        let client_key = hmac::sign(&key, b"Client Key");
        let server_key = hmac::sign(&key, b"Server Key");
        let mut stored = [0u8; 32];
        stored.copy_from_slice(digest(&SHA256, client_key.as_ref()).as_ref());
        let mut server = [0u8; 32];
        server.copy_from_slice(server_key.as_ref());
        Keys { stored, server }
    }
}

/// The one user clients log in as, and the keys of its password.
pub struct Credentials {
    user: String,
    salt: [u8; 16],
    keys: Keys,
    decoy: Keys,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// A SCRAM message that does not follow the grammar, with what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed SCRAM message: {0}")]
pub struct Malformed(pub &'static str);

/// The server's state between its first message and the client's last.
pub struct Exchange<'a> {
    keys: &'a Keys,
    gs2_header: String,
    nonce: String,
    /// `client-first-message-bare "," server-first-message`, the start of AuthMessage.
    messages: String,
}

impl Credentials {
    pub fn new(user: &str, password: &str) -> Credentials {
        let rng = SystemRandom::new();
        let mut salt = [0u8; 16];
        let mut decoy = [0u8; 32];
        // A failing system RNG leaves zeros: the salt is public anyway, and the decoy
        // password stays unknown to clients because it is never sent anywhere.
        let _ = rng.fill(&mut salt);
        let _ = rng.fill(&mut decoy);
        Credentials {
            user: user.to_owned(),
            keys: Keys::derive(password, &salt),
            decoy: Keys::derive(&hex::encode(decoy), &salt),
            salt,
        }
    }

    /// Reads client-first for `user` and returns the exchange and server-first.
    pub fn start(
        &self,
        user: &str,
        client_first: &[u8],
    ) -> Result<(Exchange<'_>, String), Malformed> {
        let text = std::str::from_utf8(client_first).map_err(|_| Malformed("not UTF-8"))?;
        let (flag, rest) = text.split_once(',').ok_or(Malformed("no GS2 header"))?;
        match flag {
            "n" | "y" => {}
            f if f.starts_with("p=") => {
                return Err(Malformed("channel binding is not offered by this server"))
            }
            _ => return Err(Malformed("unexpected channel-binding flag")),
        }
        let (authzid, bare) = rest.split_once(',').ok_or(Malformed("no GS2 header"))?;
        if !authzid.is_empty() {
            return Err(Malformed("authorization identities are not supported"));
        }
        let mut attributes = bare.split(',');
        let name = attributes.next().ok_or(Malformed("no user name"))?;
        if name.starts_with("m=") {
            return Err(Malformed("mandatory extensions are not supported"));
        }
        if !name.starts_with("n=") {
            return Err(Malformed("expected the attribute n"));
        }
        let client_nonce = attributes
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(Malformed("expected the attribute r"))?;
        if client_nonce.is_empty() || !client_nonce.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err(Malformed("the client nonce is not printable"));
        }
        let mut server_nonce = [0u8; 18];
        let _ = SystemRandom::new().fill(&mut server_nonce);
        let nonce = format!("{client_nonce}{}", BASE64.encode(server_nonce));
        let server_first = format!("r={nonce},s={},i={ITERATIONS}", BASE64.encode(self.salt));
        let keys = if user == self.user {
            &self.keys
        } else {
            &self.decoy
        };
        let exchange = Exchange {
            keys,
            gs2_header: format!("{flag},,"),
            nonce,
            messages: format!("{bare},{server_first}"),
        };
        Ok((exchange, server_first))
    }
}

/// How a login ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The password was right: send this server-final message.
    Accepted(String),
    Refused,
}

impl Exchange<'_> {
    /// Reads client-final and checks the proof.
    pub fn finish(&self, client_final: &[u8]) -> Result<Verdict, Malformed> {
        let text = std::str::from_utf8(client_final).map_err(|_| Malformed("not UTF-8"))?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or(Malformed("expected the attribute p"))?;
        let mut attributes = without_proof.split(',');
        let binding = attributes
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or(Malformed("expected the attribute c"))?;
        if BASE64.decode(binding).ok().as_deref() != Some(self.gs2_header.as_bytes()) {
            return Err(Malformed("the channel binding does not match"));
        }
        let nonce = attributes
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(Malformed("expected the attribute r"))?;
        if nonce != self.nonce {
            return Err(Malformed("the nonce does not match"));
        }
        let proof = BASE64
            .decode(proof)
            .map_err(|_| Malformed("the proof is not base64"))?;
        if proof.len() != 32 {
            return Err(Malformed("the proof has the wrong length"));
        }
        let auth_message = format!("{},{without_proof}", self.messages);
        let stored = hmac::Key::new(hmac::HMAC_SHA256, &self.keys.stored);
        let signature = hmac::sign(&stored, auth_message.as_bytes());
        let client_key: Vec<u8> = proof
            .iter()
            .zip(signature.as_ref())
            .map(|(p, s)| p ^ s)
            .collect();
        let hashed = digest(&SHA256, &client_key);
        // Constant time: every byte is compared whatever the first difference.
        let difference = hashed
            .as_ref()
            .iter()
            .zip(&self.keys.stored)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if difference != 0 {
            return Ok(Verdict::Refused);
        }
        let server = hmac::Key::new(hmac::HMAC_SHA256, &self.keys.server);
        let verifier = hmac::sign(&server, auth_message.as_bytes());
        Ok(Verdict::Accepted(format!("v={}", BASE64.encode(verifier))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login(creds: &Credentials, user: &str, password: &str) -> Verdict {
        let bare = "n=,r=rOprNGfwEbeRWgbNEkqO";
        let (exchange, server_first) = creds.start(user, format!("n,,{bare}").as_bytes()).unwrap();
        let (last, expected) =
            ferry_testkit::raw::scram_client_final(password, bare, &server_first);
        let verdict = exchange.finish(last.as_bytes()).unwrap();
        if let Verdict::Accepted(v) = &verdict {
            assert_eq!(v, &expected, "the server proves it knows the password");
        }
        verdict
    }

    #[test]
    fn the_right_password_and_only_it_is_accepted() {
        let creds = Credentials::new("ferry", "pencil");
        assert!(matches!(
            login(&creds, "ferry", "pencil"),
            Verdict::Accepted(_)
        ));
        assert_eq!(login(&creds, "ferry", "pencil2"), Verdict::Refused);
        assert_eq!(login(&creds, "mallory", "pencil"), Verdict::Refused);
    }

    #[test]
    fn malformed_messages_are_refused_without_panicking() {
        let creds = Credentials::new("ferry", "pencil");
        for first in [
            &b""[..],
            b"garbage",
            b"n,,",
            b"n,,r=abc",
            b"n,,n=,",
            b"n,,n=,r=",
            b"n,,n=,r=a b",
            b"p=tls-server-end-point,,n=,r=abc",
            b"n,a=admin,n=,r=abc",
            b"n,,m=ext,n=,r=abc",
            b"\xff\xfe",
            b"x,,n=,r=abc",
        ] {
            assert!(creds.start("ferry", first).is_err(), "{first:?}");
        }
        let (exchange, server_first) = creds.start("ferry", b"n,,n=,r=abc").unwrap();
        let nonce = server_first
            .split(',')
            .next()
            .unwrap()
            .strip_prefix("r=")
            .unwrap();
        for last in [
            String::new(),
            "garbage".into(),
            "c=biws,r=wrong,p=AAAA".into(),
            format!("c=eSws,r={nonce},p=AAAA"),
            format!("c=biws,r={nonce},p=!!!"),
            format!("c=biws,r={nonce},p=AAAA"),
            format!("c=biws,r={nonce}"),
        ] {
            assert!(exchange.finish(last.as_bytes()).is_err(), "{last:?}");
        }
    }
}
