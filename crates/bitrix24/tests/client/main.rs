//! The client against a small scripted axum mock over real sockets on 127.0.0.1 (port 0).
//!
//! Each mock answers requests with a queue of scripted replies and records what it received, so the tests assert
//! on the wire (paths, headers, bodies, batch command strings) and on the client's behaviour.
//!
//! - `mock`: the mock, the clients and the helpers every part shares;
//! - `envelope`: the request on the wire and the answer's envelope, single calls and `batch`;
//! - `retries`: retried errors, bounded retries and typed final errors;
//! - `limits`: the operating-time limit, and the limiter and stats clones share;
//! - `auth`: expiring OAuth tokens and a renamed portal's redirect;
//! - `methods`: listing calls and batched lookups;
//! - `downloads`: Disk download URLs and streamed downloads.

mod auth;
mod downloads;
mod envelope;
mod limits;
mod methods;
mod mock;
mod retries;
