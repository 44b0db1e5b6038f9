//! The key that encrypts stored secrets (OAuth tokens, the application token, the SpeechSense API key):
//! AES-256-GCM under a [`SecretKey`] that never touches the database; each ciphertext is bound to its portal
//! and column (associated data), so a value copied into another row or column does not decrypt.

use std::fmt;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine as _;
use secrecy::SecretString;
use sha2::{Digest, Sha256};

use crate::Error;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The 32-byte key that encrypts stored secrets. `Debug` never shows it.
#[derive(Clone)]
pub struct SecretKey {
    cipher: Aes256Gcm,
    /// Kept only to derive independent subkeys (see [`SecretKey::derive`]).
    raw: [u8; 32],
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

impl SecretKey {
    /// The variable holding the key (64 hex digits or base64 of 32 bytes).
    pub const ENV: &'static str = "B24SENSE_SECRET_KEY";
    /// The variable naming a file that holds the key (same formats), for secret mounts.
    pub const FILE_ENV: &'static str = "B24SENSE_SECRET_KEY_FILE";

    /// Reads the key from `B24SENSE_SECRET_KEY`, or from the file named by `B24SENSE_SECRET_KEY_FILE`.
    pub fn from_env() -> Result<SecretKey, Error> {
        if let Ok(v) = std::env::var(Self::ENV) {
            return Self::parse(&v)
                .map_err(|e| Error::SecretKey(format!("{}: {}", Self::ENV, inner_msg(e))));
        }
        if let Ok(path) = std::env::var(Self::FILE_ENV) {
            let text = std::fs::read_to_string(&path).map_err(|e| {
                Error::SecretKey(format!("{} ({path}): cannot read: {e}", Self::FILE_ENV))
            })?;
            return Self::parse(&text).map_err(|e| {
                Error::SecretKey(format!("{} ({path}): {}", Self::FILE_ENV, inner_msg(e)))
            });
        }
        Err(Error::SecretKey(format!(
            "{} is not set: set it to 32 random bytes as 64 hex digits (e.g. `openssl rand -hex 32`), \
             or set {} to a file holding them",
            Self::ENV,
            Self::FILE_ENV
        )))
    }

    /// Parses 64 hex digits or base64 of exactly 32 bytes (surrounding whitespace ignored).
    pub fn parse(s: &str) -> Result<SecretKey, Error> {
        let s = s.trim();
        let bytes = if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|_| Error::SecretKey("not hex".into()))?
        } else {
            B64.decode(s).map_err(|_| {
                Error::SecretKey("expected 64 hex digits or base64 of 32 bytes".into())
            })?
        };
        Self::from_bytes(&bytes)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<SecretKey, Error> {
        if bytes.len() != 32 {
            return Err(Error::SecretKey(format!(
                "the key must be 32 bytes, got {}",
                bytes.len()
            )));
        }
        let mut raw = [0u8; 32];
        raw.copy_from_slice(bytes);
        Ok(SecretKey {
            cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(bytes)),
            raw,
        })
    }

    /// A random key (tests, first-run helpers).
    pub fn generate() -> SecretKey {
        let key = Aes256Gcm::generate_key(OsRng);
        // A freshly generated key is always 32 bytes.
        Self::from_bytes(key.as_slice()).unwrap_or_else(|_| unreachable!())
    }

    /// A 32-byte subkey for another purpose (e.g. signing web sessions), independent of the encryption key:
    /// SHA-256 over a fixed prefix, the key and `label`.
    pub fn derive(&self, label: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"b24sense/derive/v1\0");
        h.update(self.raw);
        h.update([0u8]);
        h.update(label.as_bytes());
        h.finalize().into()
    }

    /// `base64(nonce || ciphertext)`, bound to `aad`.
    pub fn seal(&self, plain: &str, aad: &str) -> String {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        // Encryption with a valid key and a 12-byte nonce cannot fail for inputs of this size.
        let ct = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plain.as_bytes(),
                    aad: aad.as_bytes(),
                },
            )
            .unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        B64.encode(out)
    }

    /// Decrypts what [`SecretKey::seal`] produced with the same `aad`.
    pub fn open(&self, sealed: &str, aad: &str) -> Result<SecretString, Error> {
        let wrong = || {
            Error::SecretKey(format!(
                "a stored secret ({aad}) cannot be decrypted: {} differs from the key it was saved with",
                Self::ENV
            ))
        };
        let raw = B64.decode(sealed).map_err(|_| wrong())?;
        if raw.len() < 12 {
            return Err(wrong());
        }
        let (nonce, ct) = raw.split_at(12);
        let plain = self
            .cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| wrong())?;
        String::from_utf8(plain)
            .map(SecretString::from)
            .map_err(|_| wrong())
    }
}

fn inner_msg(e: Error) -> String {
    match e {
        Error::SecretKey(m) => m,
        other => other.to_string(),
    }
}

/// The associated data of a portal's secret: its portal and column.
pub(crate) fn aad(member_id: &str, column: &str) -> String {
    format!("{member_id}/{column}")
}
