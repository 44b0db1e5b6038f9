//! The REST entry points: one call with a JSON body, or a `batch` of up to 50 commands in one request.

use bytes::Bytes;
use serde_json::Value;

use super::Bitrix24Client;
use crate::envelope::{ApiResponse, BatchResponse};
use crate::error::Error;

fn valid_method(method: &str) -> Result<(), Error> {
    if !method.is_empty()
        && method.len() <= 200
        && method
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_')
    {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{method:?} is not a Bitrix24 method name"
        )))
    }
}

impl Bitrix24Client {
    /// One REST call with a JSON body, retried as `send` describes (b24sense only reads, so a repeat is safe).
    pub async fn call(&self, method: &str, params: Value) -> Result<ApiResponse, Error> {
        valid_method(method)?;
        let params = if params.is_null() {
            Value::Object(Default::default())
        } else {
            params
        };
        if !params.is_object() {
            return Err(Error::InvalidArgument(
                "call parameters must be a JSON object".into(),
            ));
        }
        let body =
            serde_json::to_vec(&params).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        self.execute(method, Bytes::from(body)).await
    }

    /// A `batch` of up to 50 commands `(name, "method?php-query")`, sent as ONE request, in the given order.
    pub async fn batch(
        &self,
        commands: &[(String, String)],
        halt: bool,
    ) -> Result<BatchResponse, Error> {
        if commands.is_empty() {
            return Ok(BatchResponse::default());
        }
        if commands.len() > 50 {
            return Err(Error::InvalidArgument(format!(
                "a batch holds at most 50 commands, got {}",
                commands.len()
            )));
        }
        let mut seen = std::collections::HashSet::new();
        for (name, _) in commands {
            if name.is_empty() || !seen.insert(name.as_str()) {
                return Err(Error::InvalidArgument(format!(
                    "batch command name {name:?} is empty or repeated"
                )));
            }
        }
        // Built by hand so the commands keep their order (they run in body order and may reference earlier
        // ones); serde_json's map would sort them.
        let mut body = format!("{{\"halt\":{},\"cmd\":{{", u8::from(halt));
        for (i, (name, cmd)) in commands.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            let enc = |s: &str| {
                serde_json::to_string(s).map_err(|e| Error::InvalidArgument(e.to_string()))
            };
            body.push_str(&enc(name)?);
            body.push(':');
            body.push_str(&enc(cmd)?);
        }
        body.push_str("}}");
        let resp = self.execute("batch", Bytes::from(body)).await?;
        BatchResponse::from_response(resp).map_err(Error::Malformed)
    }
}
