//! How the client authenticates: an incoming webhook URL or an OAuth token source.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use futures::future::BoxFuture;
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use crate::error::Error;

/// Scheme, host and port of a portal — the part that changes when a portal is renamed (302).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    pub scheme: String,
    pub host: String,
    pub port: Option<u16>,
}

impl Origin {
    pub fn of(url: &Url) -> Option<Origin> {
        Some(Origin {
            scheme: url.scheme().to_string(),
            host: url.host_str()?.to_string(),
            port: url.port(),
        })
    }

    /// `host` or `host:port` when the port is not the scheme's default.
    pub fn host_port(&self) -> String {
        match self.port {
            Some(p) => format!("{}:{p}", self.host),
            None => self.host.clone(),
        }
    }

    pub fn base(&self) -> String {
        format!("{}://{}", self.scheme, self.host_port())
    }

    /// Replaces scheme/host/port of `url` with this origin.
    pub fn apply(&self, url: &Url) -> Url {
        let mut u = url.clone();
        // These setters only fail for cannot-be-a-base URLs, which http(s) URLs never are.
        let _ = u.set_scheme(&self.scheme);
        let _ = u.set_host(Some(&self.host));
        let _ = u.set_port(self.port);
        u
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

/// An incoming webhook `https://PORTAL/rest/USER_ID/SECRET/`. `Debug`/`Display` show `***` for the secret.
#[derive(Clone)]
pub struct WebhookUrl {
    pub(crate) origin: Origin,
    host_port: String,
    user_id: u64,
    secret: SecretString,
}

impl WebhookUrl {
    /// Parses and checks a webhook URL. https is required, except for loopback hosts (the local emulator).
    /// Errors say what is wrong without repeating the secret.
    pub fn parse(s: &str) -> Result<WebhookUrl, Error> {
        let bad = |m: &str| Error::InvalidWebhook(m.to_string());
        let url = Url::parse(s.trim()).map_err(|e| bad(&format!("not a URL ({e})")))?;
        match url.scheme() {
            "https" => {}
            "http" if is_loopback(&url) => {}
            "http" => {
                return Err(bad(
                    "must start with https:// (Bitrix24 refuses webhooks over plain http)",
                ))
            }
            other => return Err(bad(&format!("scheme {other:?} is not https"))),
        }
        let origin = Origin::of(&url).ok_or_else(|| bad("has no host"))?;
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad("must not contain a query string or fragment"));
        }
        let segments: Vec<&str> = url.path_segments().map(|s| s.collect()).unwrap_or_default();
        let mut it = segments.iter().copied().filter(|s| !s.is_empty());
        if it.next() != Some("rest") {
            return Err(bad("path must be /rest/USER_ID/SECRET/"));
        }
        let user = it
            .next()
            .ok_or_else(|| bad("the user id after /rest/ is missing"))?;
        let user_id = match user.parse::<u64>() {
            Ok(id) if id > 0 => id,
            _ => return Err(bad("the user id after /rest/ must be a positive number")),
        };
        let secret = it
            .next()
            .ok_or_else(|| bad("the secret is empty (expected /rest/USER_ID/SECRET/)"))?;
        if it.next().is_some() {
            return Err(bad(
                "unexpected path after the secret: use just https://PORTAL/rest/USER_ID/SECRET/",
            ));
        }
        if !secret
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(bad(
                "the secret contains characters a webhook secret never has",
            ));
        }
        let host_port = origin.host_port();
        Ok(WebhookUrl {
            origin,
            host_port,
            user_id,
            secret: SecretString::from(secret.to_string()),
        })
    }

    /// The portal host, with `:port` only when the URL names a non-default port (the local emulator).
    pub fn host(&self) -> &str {
        &self.host_port
    }

    pub fn user_id(&self) -> u64 {
        self.user_id
    }

    /// The method URL for the given origin (which may differ from the parsed one after a rename).
    pub(crate) fn method_url(&self, origin: &Origin, method: &str) -> Result<Url, Error> {
        let s = format!(
            "{}/rest/{}/{}/{}.json",
            origin.base(),
            self.user_id,
            self.secret.expose_secret(),
            method
        );
        Url::parse(&s).map_err(|_| {
            Error::InvalidArgument(format!("cannot build a URL for method {method:?}"))
        })
    }
}

impl fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/rest/{}/***/", self.origin.base(), self.user_id)
    }
}

impl fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WebhookUrl({self})")
    }
}

/// An OAuth access token and the portal's REST base it is valid for.
#[derive(Debug, Clone)]
pub struct AccessToken {
    pub token: SecretString,
    /// `client_endpoint`, e.g. `https://acme.bitrix24.ru/rest/`.
    pub client_endpoint: Url,
}

/// Supplies OAuth access tokens (the store/engine owns refresh tokens and their rotation).
pub trait TokenSource: Send + Sync {
    /// Current access token and the portal's REST base (`client_endpoint`, e.g. `https://acme.bitrix24.ru/rest/`).
    fn access_token(&self) -> BoxFuture<'_, Result<AccessToken, Error>>;
    /// Called after `expired_token`/`invalid_token`; must refresh once (single-flight is the implementor's job)
    /// and return the new token.
    fn refresh(&self, stale: &AccessToken) -> BoxFuture<'_, Result<AccessToken, Error>>;
}

/// How the client authenticates.
#[derive(Clone)]
pub enum Credentials {
    Webhook(WebhookUrl),
    OAuth(Arc<dyn TokenSource>),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Webhook(w) => write!(f, "Webhook({w})"),
            Credentials::OAuth(_) => write!(f, "OAuth(..)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(s: &str) -> String {
        WebhookUrl::parse(s).unwrap_err().to_string()
    }

    #[test]
    fn parses_and_redacts() {
        let w = WebhookUrl::parse("https://acme.bitrix24.ru/rest/12/abc123xyz/").unwrap();
        assert_eq!(w.host(), "acme.bitrix24.ru");
        assert_eq!(w.user_id(), 12);
        assert_eq!(w.to_string(), "https://acme.bitrix24.ru/rest/12/***/");
        assert!(!format!("{w:?}").contains("abc123xyz"));
        let w = WebhookUrl::parse("http://127.0.0.1:8080/rest/1/s3cr3t").unwrap();
        assert_eq!(w.host(), "127.0.0.1:8080");
        assert!(WebhookUrl::parse("http://localhost/rest/1/s/").is_ok());
        assert!(WebhookUrl::parse("http://[::1]:9/rest/1/s/").is_ok());
    }

    #[test]
    fn errors_say_what_is_wrong_without_the_secret() {
        let e = err("http://acme.bitrix24.ru/rest/1/topsecret/");
        assert!(e.contains("https"), "{e}");
        assert!(!e.contains("topsecret"));
        let e = err("ftp://acme.bitrix24.ru/rest/1/topsecret/");
        assert!(e.contains("scheme"), "{e}");
        let e = err("https://acme.bitrix24.ru/api/1/topsecret/");
        assert!(e.contains("/rest/"), "{e}");
        let e = err("https://acme.bitrix24.ru/rest/admin/topsecret/");
        assert!(e.contains("user id"), "{e}");
        assert!(!e.contains("topsecret"));
        let e = err("https://acme.bitrix24.ru/rest/1/");
        assert!(e.contains("secret"), "{e}");
        assert!(err("https://acme.bitrix24.ru/rest/1//").contains("secret is empty"));
        assert!(err("not a url").contains("not a URL"));
        let e = err("https://acme.bitrix24.ru/rest/1/topsecret/profile.json");
        assert!(!e.contains("topsecret"), "{e}");
    }
}
