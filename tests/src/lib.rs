//! Workspace integration tests live in `tests/`; the shared harness is
//! `common::testing` (feature `test-support`), so every crate's tests can use it.
