//! Fault injection end to end: the real Bitrix24 and SpeechSense clients, the engine and a ledger, against the two
//! emulators with one fault each (and all at once). Every test checks the delivery guarantee the same way
//! ([`env::Env::check`]): each qualifying call is in SpeechSense exactly once or failed with the expected reason,
//! every listed call has a final ledger entry, and the ledger's talk IDs are the emulator's talks.
//!
//! - `env`: the environment (emulators, clients, ledger checks) every test runs in;
//! - `one_each`: one fault at a time, table-driven, for each side;
//! - `bitrix24`: Bitrix24 faults with tests of their own (expired tokens, vanished recordings);
//! - `speechsense`: SpeechSense faults with tests of their own (refusals, outages, lost answers);
//! - `all_at_once`: every kind of fault in one run, on both ledgers.

mod all_at_once;
mod bitrix24;
mod env;
mod one_each;
mod speechsense;
