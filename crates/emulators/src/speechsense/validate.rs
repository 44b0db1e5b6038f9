//! The checks in the real service's order: credentials → connection → payload.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDateTime};
use tonic::metadata::MetadataMap;
use tonic::Status;

use super::{ConnectionConfig, SpeechSenseConfig};

const MAX_VALUE_BYTES: usize = 1024;

/// Returns the principal (the secret itself) of a valid `authorization` header.
pub(super) fn auth(md: &MetadataMap, config: &SpeechSenseConfig) -> Result<String, Status> {
    let Some(value) = md.get("authorization") else {
        return Err(Status::unauthenticated(
            "IAM token or API key has to be passed in request",
        ));
    };
    let value = value
        .to_str()
        .map_err(|_| Status::unauthenticated("Token is invalid or has expired."))?;
    let (scheme, secret) = value.split_once(' ').unwrap_or((value, ""));
    let secret = secret.trim();
    let known = match scheme {
        "Api-Key" => config.api_keys.iter().any(|k| k == secret),
        "Bearer" => config.bearer_tokens.iter().any(|k| k == secret),
        _ => false,
    };
    if known && !secret.is_empty() {
        Ok(secret.to_string())
    } else {
        Err(Status::unauthenticated("Token is invalid or has expired."))
    }
}

pub(super) fn connection<'a>(
    config: &'a SpeechSenseConfig,
    principal: &str,
    connection_id: &str,
) -> Result<&'a ConnectionConfig, Status> {
    if connection_id.is_empty() {
        return Err(Status::invalid_argument("connection_id is required"));
    }
    let Some(conn) = config.connections.iter().find(|c| c.id == connection_id) else {
        return Err(Status::not_found(format!(
            "connection {connection_id} not found"
        )));
    };
    allowed(conn, principal)?;
    Ok(conn)
}

pub(super) fn allowed(conn: &ConnectionConfig, principal: &str) -> Result<(), Status> {
    match &conn.allowed_keys {
        Some(list) if !list.iter().any(|p| p == principal) => Err(Status::permission_denied(
            format!("Permission denied to connection {}", conn.id),
        )),
        _ => Ok(()),
    }
}

/// `date` as SpeechSense accepts it: RFC 3339, or without an offset (older examples).
pub(super) fn parse_date(value: &str) -> Option<DateTime<chrono::Utc>> {
    if let Ok(d) = DateTime::parse_from_rfc3339(value) {
        return Some(d.to_utc());
    }
    NaiveDateTime::parse_from_str(value, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .map(|n| n.and_utc())
}

pub(super) fn fields(
    conn: &ConnectionConfig,
    fields: &BTreeMap<String, String>,
) -> Result<(), Status> {
    for key in &conn.required_keys {
        if !fields.contains_key(key) {
            return Err(Status::invalid_argument(format!(
                "required metadata key {key} is missing"
            )));
        }
    }
    for (key, value) in fields {
        if conn.strict && !conn.declared_keys.iter().any(|k| k == key) {
            return Err(Status::invalid_argument(format!(
                "metadata key {key} is not defined in the connection"
            )));
        }
        if value.len() > MAX_VALUE_BYTES {
            return Err(Status::invalid_argument(format!(
                "metadata value of {key} is longer than 1024 bytes"
            )));
        }
    }
    if let Some(date) = fields.get("date") {
        if parse_date(date).is_none() {
            return Err(Status::invalid_argument(format!(
                "metadata key date: {date:?} is not an RFC 3339 date"
            )));
        }
    }
    if let Some(dir) = fields.get("direction_outgoing") {
        if dir != "true" && dir != "false" {
            return Err(Status::invalid_argument(format!(
                "metadata key direction_outgoing: {dir:?} is not true/false"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert!(parse_date("2025-04-24T14:34:19+03:00").is_some());
        assert!(parse_date("2025-04-24T11:34:19Z").is_some());
        assert!(parse_date("2025-04-24T14:34:19.123").is_some());
        assert!(parse_date("24.04.2025").is_none());
    }
}
