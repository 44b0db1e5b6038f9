//! Fault-injection tests (being written).
