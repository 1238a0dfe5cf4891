//! The real `db-server` binary: health, TLS offered to PostgreSQL clients, SIGTERM.

use std::path::Path;

use common::Environment;
use common::testing::{TestConfig, read_greeting, run_binary_lifecycle};

const BIN: &str = env!("CARGO_BIN_EXE_db-server");

#[test]
fn serves_health_answers_postgres_clients_and_stops_on_sigterm() {
    let test = TestConfig::new(Environment::Development);
    run_binary_lifecycle(Path::new(BIN), &test, 2, "db http", None, |addrs| {
        // An SSLRequest (length 8, code 80877103) is answered 'S': TLS is offered.
        let ssl_request = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
        let reply = read_greeting(addrs["db pg"], &ssl_request, 1);
        assert_eq!(reply, b"S");
    });
}

#[test]
fn staging_serves_the_http_api_over_tls_only() {
    let (test, ca) = TestConfig::new(Environment::Staging)
        .set("db.admin_password", "a-real-password")
        .with_generated_tls();
    run_binary_lifecycle(Path::new(BIN), &test, 2, "db http", Some(&ca), |_| {});
}
