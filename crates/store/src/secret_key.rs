//! The key that encrypts stored secrets (OAuth tokens, the application token, the SpeechSense API key):
//! AES-256-GCM under a [`SecretKey`] that never touches the database; each ciphertext is bound to its portal
//! and column (associated data), so a value copied into another row or column does not decrypt.
//!
//! A ciphertext names the key that sealed it (`v2.<key id>.<base64>`, the key id being 4 bytes of a hash of
//! the key), so during a key rotation ([`crate::key_rotation`]) a [`SecretKey`] can hold the new key and the
//! old one and open either kind. Ciphertexts from before key ids (plain base64) are tried with each key.

use std::fmt;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine as _;
use secrecy::SecretString;
use sha2::{Digest, Sha256};

use crate::Error;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// What starts a ciphertext that names its key (base64 never contains a `.`, so older ones cannot match).
const KEYED_PREFIX: &str = "v2.";

/// The key that encrypts stored secrets: the current key, which seals, and during a rotation the previous
/// one, which only opens. `Debug` never shows either.
#[derive(Clone)]
pub struct SecretKey {
    current: KeyMaterial,
    previous: Option<KeyMaterial>,
}

#[derive(Clone)]
struct KeyMaterial {
    cipher: Aes256Gcm,
    /// Kept only to derive independent subkeys (see [`SecretKey::derive`]).
    raw: [u8; 32],
    /// 8 hex digits naming the key in ciphertexts (not secret: 32 bits of a hash of the key).
    id: String,
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
    /// During a key rotation: the previous key, still accepted for reading (never for writing).
    pub const OLD_ENV: &'static str = "B24SENSE_OLD_SECRET_KEY";
    /// During a key rotation: a file holding the previous key.
    pub const OLD_FILE_ENV: &'static str = "B24SENSE_OLD_SECRET_KEY_FILE";

    /// Reads the key from `B24SENSE_SECRET_KEY` (or the file named by `B24SENSE_SECRET_KEY_FILE`) and, when
    /// set, the previous key from `B24SENSE_OLD_SECRET_KEY` (or `B24SENSE_OLD_SECRET_KEY_FILE`).
    pub fn from_env() -> Result<SecretKey, Error> {
        let current = Self::read_env(Self::ENV, Self::FILE_ENV)?.ok_or_else(|| {
            Error::SecretKey(format!(
                "{} is not set: set it to 32 random bytes as 64 hex digits (e.g. `openssl rand -hex 32` \
                 or `b24sense keys generate`), or set {} to a file holding them",
                Self::ENV,
                Self::FILE_ENV
            ))
        })?;
        Ok(match Self::read_env(Self::OLD_ENV, Self::OLD_FILE_ENV)? {
            Some(old) => current.with_previous(&old),
            None => current,
        })
    }

    /// The key in variable `var`, or in the file named by `file_var`; `None` when neither is set.
    fn read_env(var: &str, file_var: &str) -> Result<Option<SecretKey>, Error> {
        if let Ok(v) = std::env::var(var) {
            return Self::parse(&v)
                .map(Some)
                .map_err(|e| Error::SecretKey(format!("{var}: {}", inner_msg(e))));
        }
        if let Ok(path) = std::env::var(file_var) {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| Error::SecretKey(format!("{file_var} ({path}): cannot read: {e}")))?;
            return Self::parse(&text)
                .map(Some)
                .map_err(|e| Error::SecretKey(format!("{file_var} ({path}): {}", inner_msg(e))));
        }
        Ok(None)
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
        let id: String = derive_from(&raw, "key-id")[..4]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(SecretKey {
            current: KeyMaterial {
                cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(bytes)),
                raw,
                id,
            },
            previous: None,
        })
    }

    /// A random key (tests, first-run helpers).
    pub fn generate() -> SecretKey {
        let key = Aes256Gcm::generate_key(OsRng);
        // A freshly generated key is always 32 bytes.
        Self::from_bytes(key.as_slice()).unwrap_or_else(|_| unreachable!())
    }

    /// A fresh random key as 64 hex digits (`b24sense keys generate`).
    pub fn generate_hex() -> SecretString {
        let key = Aes256Gcm::generate_key(OsRng);
        SecretString::from(key.iter().map(|b| format!("{b:02x}")).collect::<String>())
    }

    /// This key, which seals, still opening what `previous` (its current key) sealed: the key ring of a
    /// rotation. A `previous` equal to this key changes nothing.
    pub fn with_previous(self, previous: &SecretKey) -> SecretKey {
        let previous = (previous.current.id != self.current.id).then(|| previous.current.clone());
        SecretKey { previous, ..self }
    }

    /// Whether a previous key is held (a rotation is under way).
    pub fn has_previous(&self) -> bool {
        self.previous.is_some()
    }

    /// The current key's id as ciphertexts name it (8 hex digits, not secret): lets an operator tell keys apart.
    pub fn id(&self) -> &str {
        &self.current.id
    }

    /// A 32-byte subkey of the current key for another purpose (e.g. signing web sessions), independent of the
    /// encryption key: SHA-256 over a fixed prefix, the key and `label`.
    pub fn derive(&self, label: &str) -> [u8; 32] {
        derive_from(&self.current.raw, label)
    }

    /// `v2.<key id>.base64(nonce || ciphertext)` under the current key, bound to `aad`.
    pub fn seal(&self, plain: &str, aad: &str) -> String {
        let k = &self.current;
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        // Encryption with a valid key and a 12-byte nonce cannot fail for inputs of this size.
        let ct = k
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
        format!("{KEYED_PREFIX}{}.{}", k.id, B64.encode(out))
    }

    /// Decrypts what [`SecretKey::seal`] produced with the same `aad`, under the current or the previous key.
    pub fn open(&self, sealed: &str, aad: &str) -> Result<SecretString, Error> {
        let keys = || std::iter::once(&self.current).chain(self.previous.as_ref());
        let opened = match keyed(sealed) {
            Some((id, body)) => match keys().find(|k| k.id == id) {
                Some(k) => k.open(body, aad),
                None => {
                    return Err(Error::SecretKey(format!(
                        "a stored secret ({aad}) was saved with key {id}, which is neither {} ({}) nor {}",
                        Self::ENV,
                        self.current.id,
                        self.previous
                            .as_ref()
                            .map(|p| format!("{} ({})", Self::OLD_ENV, p.id))
                            .unwrap_or_else(|| format!("{} (not set)", Self::OLD_ENV)),
                    )))
                }
            },
            // From before key ids: whichever key opens it.
            None => keys().find_map(|k| k.open(sealed, aad)),
        };
        opened.ok_or_else(|| {
            Error::SecretKey(format!(
                "a stored secret ({aad}) cannot be decrypted: {} differs from the key it was saved with",
                Self::ENV
            ))
        })
    }

    /// The `LIKE` pattern matching ciphertexts under the current key (the id is hex: no wildcards in it).
    pub(crate) fn current_pattern(&self) -> String {
        format!("{KEYED_PREFIX}{}.%", self.current.id)
    }
}

impl KeyMaterial {
    /// Decrypts `base64(nonce || ciphertext)`; `None` for anything this key did not seal with `aad`.
    fn open(&self, body: &str, aad: &str) -> Option<SecretString> {
        let raw = B64.decode(body).ok()?;
        if raw.len() < 12 {
            return None;
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
            .ok()?;
        String::from_utf8(plain).ok().map(SecretString::from)
    }
}

/// `(key id, base64 body)` of a ciphertext that names its key.
fn keyed(sealed: &str) -> Option<(&str, &str)> {
    sealed.strip_prefix(KEYED_PREFIX)?.split_once('.')
}

fn derive_from(raw: &[u8; 32], label: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"b24sense/derive/v1\0");
    h.update(raw);
    h.update([0u8]);
    h.update(label.as_bytes());
    h.finalize().into()
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
