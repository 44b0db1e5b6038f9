//! Proving an install: an installation is what the Bitrix24 OAuth server says it is. The install request (the
//! iframe POST or `ONAPPINSTALL`) is unauthenticated, so nothing it names is believed: its refresh token is
//! exchanged at an allowed OAuth server (with the application's client id and secret), and the answer names the
//! portal — `member_id` and `client_endpoint`, hence the domain. A request that disagrees with the answer is
//! refused; then `profile` at that `client_endpoint`, with the answer's new access token, must name an
//! administrator. Until then no request goes anywhere but the allowed OAuth servers, and nothing is stored.

use secrecy::SecretString;
use url::Url;

use crate::frame::{endpoint_allowed, portal_endpoint_ok, verify_user};
use crate::oauth::{refresh_grant, OAuthClient, TokenAnswer};
use crate::AppState;

/// What an install request claims.
pub struct Claim<'a> {
    pub member_id: &'a str,
    /// `DOMAIN` of the frame or `auth[domain]` of the event.
    pub domain: &'a str,
    pub refresh_token: &'a str,
    /// `SERVER_ENDPOINT` / `auth[server_endpoint]` when sent: which allowed OAuth server to ask.
    pub server_endpoint: &'a str,
    /// `auth[client_endpoint]` of the event, when sent: must match the OAuth server's answer.
    pub client_endpoint: &'a str,
}

/// An installation the OAuth server vouched for, with the fresh token pair it issued.
pub struct Proven {
    pub member_id: String,
    /// `host[:port]` of `client_endpoint`, lower case.
    pub domain: String,
    pub client_endpoint: Url,
    pub server_endpoint: Url,
    pub access_token: SecretString,
    pub refresh_token: SecretString,
    pub expires_in: i64,
}

/// Why an install was refused (logged by the caller; never carries a secret).
#[derive(Debug)]
pub enum Refusal {
    /// The request names an OAuth server that is not allowed (the client secret would go there).
    UnknownServer,
    /// No allowed OAuth server accepted the refresh token (reason for the log).
    NotConfirmed(String),
    /// The request disagrees with the OAuth server's answer about this field.
    Mismatch(&'static str),
    /// The token is valid but its user is not an administrator.
    NotAdmin,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::UnknownServer => {
                write!(f, "the request names an OAuth server that is not allowed")
            }
            Refusal::NotConfirmed(why) => write!(f, "not confirmed ({why})"),
            Refusal::Mismatch(field) => {
                write!(
                    f,
                    "the request's {field} differs from the OAuth server's answer"
                )
            }
            Refusal::NotAdmin => write!(f, "the installing user is not an administrator"),
        }
    }
}

/// Proves `claim` (see the module doc).
pub async fn prove(state: &AppState, claim: &Claim<'_>) -> Result<Proven, Refusal> {
    let client = OAuthClient {
        client_id: state.config.client_id.clone(),
        client_secret: state.config.client_secret.clone(),
        http: state.http.clone(),
    };
    let refresh = SecretString::from(claim.refresh_token.to_string());
    let mut last = String::from("no OAuth server is allowed");
    let mut found = None;
    for (server, token_url) in oauth_servers(state, claim.server_endpoint)? {
        match refresh_grant(&client, token_url, &refresh).await {
            Ok(a) if a.error.is_none() && a.access_token.is_some() && a.refresh_token.is_some() => {
                found = Some((server, a));
                break;
            }
            Ok(a) => last = format!("{server}: {}", short_code(a.error.as_deref())),
            Err(e) => last = format!("{server}: {e}"),
        }
    }
    let (server, answer) = found.ok_or(Refusal::NotConfirmed(last))?;
    let proven = check_answer(state, claim, &server, answer)?;
    match verify_user(state, &proven.client_endpoint, secret(&proven.access_token)).await {
        Ok(p) if p.admin => Ok(proven),
        Ok(_) => Err(Refusal::NotAdmin),
        Err(e) => Err(Refusal::NotConfirmed(format!("profile: {e}"))),
    }
}

fn secret(s: &SecretString) -> &str {
    secrecy::ExposeSecret::expose_secret(s)
}

/// The OAuth servers to ask, as `(host[:port], token URL)`: the one the request names if it is allowed (else
/// the install is refused), otherwise every allowed one in order (a refresh token is valid at one of them only).
fn oauth_servers(state: &AppState, named: &str) -> Result<Vec<(String, Url)>, Refusal> {
    if !named.is_empty() {
        let url = Url::parse(named)
            .ok()
            .filter(|u| endpoint_allowed(state, u))
            .ok_or(Refusal::UnknownServer)?;
        let host = allowed_server(state, &url).ok_or(Refusal::UnknownServer)?;
        let token = url
            .join("/oauth/token/")
            .map_err(|_| Refusal::UnknownServer)?;
        return Ok(vec![(host, token)]);
    }
    let scheme = if state.config.allow_http_portals {
        "http"
    } else {
        "https"
    };
    Ok(state
        .config
        .oauth_servers
        .iter()
        .filter_map(|h| {
            let url = Url::parse(&format!("{scheme}://{h}/oauth/token/")).ok()?;
            Some((h.to_ascii_lowercase(), url))
        })
        .collect())
}

/// `host[:port]` of `url` when it is one of the allowed OAuth servers.
fn allowed_server(state: &AppState, url: &Url) -> Option<String> {
    let host = host_port(url)?;
    state
        .config
        .oauth_servers
        .iter()
        .any(|s| s.eq_ignore_ascii_case(&host))
        .then_some(host)
}

fn host_port(url: &Url) -> Option<String> {
    let host = url.host_str()?.to_ascii_lowercase();
    Some(match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host,
    })
}

/// The answer names the portal; the request must agree with it.
fn check_answer(
    state: &AppState,
    claim: &Claim<'_>,
    server: &str,
    a: TokenAnswer,
) -> Result<Proven, Refusal> {
    let member_id = a.member_id.unwrap_or_default();
    if member_id.is_empty() || member_id != claim.member_id {
        return Err(Refusal::Mismatch("member_id"));
    }
    let client_endpoint = a
        .client_endpoint
        .as_deref()
        .and_then(|u| Url::parse(u).ok())
        .filter(|u| portal_endpoint_ok(state, u))
        .ok_or_else(|| {
            Refusal::NotConfirmed(format!("{server}: no usable client_endpoint in the answer"))
        })?;
    let domain = host_port(&client_endpoint).unwrap_or_default();
    if !claim.domain.eq_ignore_ascii_case(&domain) {
        return Err(Refusal::Mismatch("domain"));
    }
    if !claim.client_endpoint.is_empty()
        && Url::parse(claim.client_endpoint).ok().as_ref() != Some(&client_endpoint)
    {
        return Err(Refusal::Mismatch("client_endpoint"));
    }
    // Where later refreshes go: the answer's server_endpoint if it is allowed, else the server that answered.
    let scheme = if state.config.allow_http_portals {
        "http"
    } else {
        "https"
    };
    let server_endpoint = a
        .server_endpoint
        .as_deref()
        .and_then(|u| Url::parse(u).ok())
        .filter(|u| endpoint_allowed(state, u) && allowed_server(state, u).is_some())
        .or_else(|| Url::parse(&format!("{scheme}://{server}/rest/")).ok())
        .ok_or_else(|| Refusal::NotConfirmed(format!("{server}: unusable server_endpoint")))?;
    Ok(Proven {
        member_id,
        domain,
        client_endpoint,
        server_endpoint,
        access_token: SecretString::from(a.access_token.unwrap_or_default()),
        refresh_token: SecretString::from(a.refresh_token.unwrap_or_default()),
        expires_in: a.expires_in.filter(|s| *s > 0).unwrap_or(3600),
    })
}

/// An OAuth error code as a short identifier (anything else from the server is not echoed).
fn short_code(code: Option<&str>) -> String {
    let code: String = code
        .unwrap_or("no tokens in the answer")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ' '))
        .take(64)
        .collect();
    code
}
