//! The REST error of the emulated portal ([`ApiError`]): an HTTP status and the portal's exact envelope.

use serde_json::{json, Value};

/// A REST error: HTTP status + `{"error", "error_description"[, "argument"]}`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ApiError {
    pub status: u16,
    pub code: String,
    pub description: String,
    pub argument: Option<String>,
}

impl ApiError {
    pub fn new(status: u16, code: &str, description: &str) -> ApiError {
        ApiError {
            status,
            code: code.into(),
            description: description.into(),
            argument: None,
        }
    }

    pub fn with_argument(mut self, arg: &str) -> ApiError {
        self.argument = Some(arg.into());
        self
    }

    pub fn argument(arg: &str) -> ApiError {
        ApiError::new(
            400,
            "ERROR_ARGUMENT",
            &format!("Invalid value of argument {arg}"),
        )
        .with_argument(arg)
    }

    pub fn method_not_found() -> ApiError {
        ApiError::new(404, "ERROR_METHOD_NOT_FOUND", "Method not found!")
    }

    pub(crate) fn body(&self) -> Value {
        let mut v = json!({"error": self.code, "error_description": self.description});
        if let Some(a) = &self.argument {
            v["argument"] = json!(a);
        }
        v
    }

    /// 503 `QUERY_LIMIT_EXCEEDED`: the leaky bucket is full.
    pub fn query_limit() -> ApiError {
        ApiError::new(503, "QUERY_LIMIT_EXCEEDED", "Too many requests")
    }

    /// 401 `NO_AUTH_FOUND`: no usable credentials.
    pub fn no_auth() -> ApiError {
        ApiError::new(401, "NO_AUTH_FOUND", "Wrong authorization data")
    }

    /// 404 `ERROR_NOT_FOUND` for a file (Disk download or recording).
    pub fn file_not_found() -> ApiError {
        ApiError::new(404, "ERROR_NOT_FOUND", "File not found")
    }
}
