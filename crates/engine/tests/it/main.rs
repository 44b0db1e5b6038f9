//! Engine tests: the pipeline against scriptable fakes (`pipeline`), and end to end against the emulators over
//! real sockets (`e2e`). One test binary, so the 2-core CI links once.

mod chats;
mod chats_e2e;
mod concurrency;
mod download_accounting;
mod e2e;
mod fakes;
mod faults;
mod ledger_faults;
mod ledger_faults_pg;
mod ledger_harness;
mod pg_proxy;
mod pipeline;
mod support;
