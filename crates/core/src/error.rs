//! The retry taxonomy shared by every adapter: *what* an error means for the work, not *when* to retry
//! (the engine's retry policy decides that, as in Vector's `RetryLogic`).

use std::time::Duration;

/// How the engine should treat a failed operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Nothing took effect on the other side; trying again later may succeed. `after` is the server's hint.
    Retryable { after: Option<Duration> },
    /// Trying again will fail the same way; report this item and move on.
    Permanent,
    /// The operation may have taken effect (an upload may have created a talk): never retry blindly.
    InDoubt,
    /// Nothing can succeed in this run (wrong credentials, unknown connection): stop the whole run.
    Fatal,
}

impl ErrorClass {
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorClass::Retryable { .. })
    }
}
