//! The Bitrix24 portal emulator over real sockets on 127.0.0.1: envelopes, quirks, filters, batch, limits,
//! recordings, faults and stats.
//!
//! - `support`: the HTTP client, the emulator and REST calls every part shares;
//! - `listing`: `voximplant.statistic.get` — the envelope, filters, form encoding and order;
//! - `batch`: keyset chains, references, the command cap, halting and nesting;
//! - `limits`: the leaky bucket and the operating-time limit;
//! - `auth`: authentication errors and unknown methods;
//! - `lookups`: users and CRM entities;
//! - `recordings`: downloads via Disk and via URLs;
//! - `faults`: injected faults and slow downloads;
//! - `generator`: the generated portal (seeded; a size smoke test).

mod auth;
mod batch;
mod faults;
mod generator;
mod limits;
mod listing;
mod lookups;
mod recordings;
mod support;
