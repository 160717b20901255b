//! Sealing peer passwords with the daemon's secret key.
//!
//! A sealed secret is `0x01 ‖ nonce (12 bytes) ‖ AES-256-GCM(ciphertext ‖ tag)`, with a fresh
//! random nonce every time. The catalog also keeps a sealed check value, so a daemon started
//! with the wrong key stops at once with a clear message instead of failing later on every peer.

use std::fmt;
use std::path::Path;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

use crate::CatalogError;

const VERSION: u8 = 1;

/// The 32-byte key that seals secrets in the catalog.
pub struct SecretKey {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(…)")
    }
}

/// Why a key could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the secret key must be 64 hexadecimal characters (32 bytes), got {0} characters")]
    Length(usize),
    #[error("the secret key must be hexadecimal")]
    NotHex,
    #[error("cannot read the secret key file {path}: {error}")]
    File { path: String, error: String },
}

impl SecretKey {
    /// Reads a key from 64 hex characters (surrounding white space ignored).
    pub fn from_hex(text: &str) -> Result<SecretKey, KeyError> {
        let text = text.trim();
        if text.len() != 64 {
            return Err(KeyError::Length(text.chars().count()));
        }
        let bytes = hex::decode(text).map_err(|_| KeyError::NotHex)?;
        let unbound =
            UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| KeyError::Length(text.len()))?;
        Ok(SecretKey {
            key: LessSafeKey::new(unbound),
            rng: SystemRandom::new(),
        })
    }

    /// Reads a key file holding 64 hex characters.
    pub fn from_file(path: &Path) -> Result<SecretKey, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|e| KeyError::File {
            path: path.display().to_string(),
            error: e.to_string(),
        })?;
        SecretKey::from_hex(&text)
    }

    /// Seals `plain` under a fresh nonce.
    pub fn seal(&self, plain: &[u8]) -> Result<Vec<u8>, CatalogError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| CatalogError::Secret("no randomness available to seal a secret".into()))?;
        let mut buf = plain.to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut buf)
            .map_err(|_| CatalogError::Secret("sealing a secret failed".into()))?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + buf.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        Ok(out)
    }

    /// Opens a value sealed by [`SecretKey::seal`] with the same key.
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, CatalogError> {
        let wrong = || {
            CatalogError::Secret(
                "a secret in the catalog cannot be opened with this secret key (was the catalog written with another key?)"
                    .into(),
            )
        };
        if sealed.len() < 1 + NONCE_LEN || sealed[0] != VERSION {
            return Err(wrong());
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&sealed[1..1 + NONCE_LEN]);
        let mut buf = sealed[1 + NONCE_LEN..].to_vec();
        let plain = self
            .key
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut buf)
            .map_err(|_| wrong())?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const K2: &str = "ff0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn seal_open_round_trip_with_fresh_nonces() {
        let k = SecretKey::from_hex(K1).unwrap();
        let a = k.seal(b"hunter2").unwrap();
        let b = k.seal(b"hunter2").unwrap();
        assert_ne!(a, b, "nonces must differ");
        assert!(!a.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(k.open(&a).unwrap(), b"hunter2");
    }

    #[test]
    fn wrong_key_and_tampering_fail() {
        let sealed = SecretKey::from_hex(K1).unwrap().seal(b"pw").unwrap();
        assert!(SecretKey::from_hex(K2).unwrap().open(&sealed).is_err());
        let mut bad = sealed.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(SecretKey::from_hex(K1).unwrap().open(&bad).is_err());
        assert!(SecretKey::from_hex(K1).unwrap().open(&sealed[..5]).is_err());
    }

    #[test]
    fn key_text_is_checked() {
        assert_eq!(SecretKey::from_hex("abc").unwrap_err(), KeyError::Length(3));
        assert_eq!(
            SecretKey::from_hex(&"zz".repeat(32)).unwrap_err(),
            KeyError::NotHex
        );
        assert!(SecretKey::from_hex(&format!("  {K1}\n")).is_ok());
    }
}
