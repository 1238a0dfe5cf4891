//! The real `app-server` binary: control API health, app traffic listener, SIGTERM.

use std::path::Path;

use common::Environment;
use common::testing::{TestConfig, curl, run_binary_lifecycle};

const BIN: &str = env!("CARGO_BIN_EXE_app-server");

#[test]
fn serves_health_and_stops_on_sigterm() {
    let test = TestConfig::new(Environment::Development);
    run_binary_lifecycle(Path::new(BIN), &test, 2, "app api", None, |addrs| {
        let (status, body) = curl(&[&format!("http://{}/", addrs["app http"])]);
        assert_eq!(status, 404);
        assert!(body.contains("no app"), "{body}");
    });
}

#[test]
fn production_serves_the_control_api_over_tls_with_a_real_token() {
    let (test, ca) = TestConfig::new(Environment::Production)
        .set("app.api_token", "7e1f0c2a9b")
        .with_generated_tls();
    run_binary_lifecycle(Path::new(BIN), &test, 2, "app api", Some(&ca), |_| {});
}
