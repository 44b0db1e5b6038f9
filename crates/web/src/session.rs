//! Signed session tokens carried by the settings page (no cookies: third-party iframe cookies are blocked),
//! and CSRF tokens bound to a session. How a request proves its session is [`crate::auth`].

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::i18n::Lang;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Who a session belongs to. The wire names are one letter each: the token travels in every API request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// `member_id` of the portal.
    #[serde(rename = "m")]
    pub member_id: String,
    /// Bitrix24 user ID (an administrator).
    #[serde(rename = "u")]
    pub user_id: u64,
    /// Page language, on the wire `ru` or `en`.
    #[serde(rename = "l", with = "crate::i18n::lang_code")]
    pub lang: Lang,
    /// The installation's generation when the session was issued: once an install, reinstall or uninstall moved
    /// it on, the session is refused ([`crate::auth`]).
    #[serde(rename = "g")]
    pub generation: i64,
    /// Expiry, Unix seconds: a short idle limit, which the open page keeps moving by renewing the session.
    #[serde(rename = "e")]
    pub expires: i64,
}

/// Signs and checks sessions; two independent keys for sessions and CSRF tokens.
#[derive(Clone)]
pub struct Signer {
    session_key: [u8; 32],
    csrf_key: [u8; 32],
}

type HmacSha256 = Hmac<Sha256>;

fn mac(key: &[u8; 32], data: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length.
    let mut m = <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

fn verify(key: &[u8; 32], data: &[u8], tag: &[u8]) -> bool {
    let Ok(mut m) = <HmacSha256 as Mac>::new_from_slice(key) else {
        return false;
    };
    m.update(data);
    m.verify_slice(tag).is_ok()
}

impl Signer {
    pub fn new(session_key: [u8; 32], csrf_key: [u8; 32]) -> Signer {
        Signer {
            session_key,
            csrf_key,
        }
    }

    /// `base64(json).base64(hmac)`
    pub fn sign(&self, s: &Session) -> String {
        let body = B64.encode(serde_json::to_vec(s).unwrap_or_default());
        let tag = B64.encode(mac(&self.session_key, body.as_bytes()));
        format!("{body}.{tag}")
    }

    /// The session if the signature is valid and it has not expired at `now` (Unix seconds).
    pub fn check(&self, token: &str, now: i64) -> Option<Session> {
        let (body, tag) = token.split_once('.')?;
        let tag = B64.decode(tag).ok()?;
        if !verify(&self.session_key, body.as_bytes(), &tag) {
            return None;
        }
        let s: Session = serde_json::from_slice(&B64.decode(body).ok()?).ok()?;
        (s.expires > now).then_some(s)
    }

    /// The CSRF token of a session token.
    pub fn csrf(&self, session_token: &str) -> String {
        B64.encode(mac(&self.csrf_key, session_token.as_bytes()))
    }

    pub fn check_csrf(&self, session_token: &str, csrf: &str) -> bool {
        match B64.decode(csrf) {
            Ok(tag) => verify(&self.csrf_key, session_token.as_bytes(), &tag),
            Err(_) => false,
        }
    }
}

/// Constant-time comparison of two secrets (application tokens).
pub fn same_secret(a: &str, b: &str) -> bool {
    let k = [7u8; 32];
    verify(&k, a.as_bytes(), &mac(&k, b.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_and_csrf() {
        let s = Signer::new([1; 32], [2; 32]);
        let sess = Session {
            member_id: "m1".into(),
            user_id: 1,
            lang: Lang::Ru,
            generation: 1,
            expires: 1000,
        };
        let t = s.sign(&sess);
        assert_eq!(s.check(&t, 999), Some(sess.clone()));
        assert_eq!(s.check(&t, 1000), None, "expired");
        let other = Signer::new([3; 32], [2; 32]);
        assert_eq!(other.check(&t, 0), None, "other key");
        let mut forged = t.clone();
        forged.replace_range(0..1, if t.starts_with('e') { "f" } else { "e" });
        assert_eq!(s.check(&forged, 0), None);
        let c = s.csrf(&t);
        assert!(s.check_csrf(&t, &c));
        assert!(!s.check_csrf(&forged, &c));
        assert!(!s.check_csrf(&t, "nope"));
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
    }

    #[test]
    fn tokens_keep_their_short_wire_names() {
        let s = Signer::new([1; 32], [2; 32]);
        let sess = Session {
            member_id: "m1".into(),
            user_id: 7,
            lang: Lang::En,
            generation: 3,
            expires: 1000,
        };
        let body = s.sign(&sess).split('.').next().unwrap().to_string();
        assert_eq!(
            B64.decode(body).unwrap(),
            br#"{"m":"m1","u":7,"l":"en","g":3,"e":1000}"#
        );
    }
}
