//! Every role started in-process through its crate's `run`, the way `quartet up` starts it:
//! bound on port 0, configuration injected as a map, real HTTP and TLS clients.

use common::testing::{RunningRole, TestConfig, curl, http_get_on, tls_connect};
use common::{Environment, Role};

fn health(addr: std::net::SocketAddr) -> u16 {
    curl(&[&format!("http://{addr}/healthz")]).0
}

#[tokio::test(flavor = "multi_thread")]
async fn every_role_serves_health_and_stops_cleanly() {
    let test = TestConfig::new(Environment::Development);
    let web = RunningRole::start(Role::Web, &test, web_server::run).await;
    let db = RunningRole::start(Role::Db, &test, db_server::run).await;
    let mail = RunningRole::start(Role::Mail, &test, mail_server::run).await;
    let app = RunningRole::start(Role::App, &test, app_server::run).await;

    assert_eq!(health(web.addr("http")), 200);
    assert_eq!(health(db.addr("http")), 200);
    assert_eq!(health(mail.addr("http")), 200);
    assert_eq!(health(app.addr("api")), 200);

    // Each role has its own registry: no global recorder shared between roles.
    let (_, web_metrics) = curl(&[&format!("http://{}/metrics", web.addr("http"))]);
    let (_, mail_metrics) = curl(&[&format!("http://{}/metrics", mail.addr("http"))]);
    assert!(web_metrics.contains("role=\"web\"") && !web_metrics.contains("role=\"mail\""));
    assert!(mail_metrics.contains("role=\"mail\"") && !mail_metrics.contains("role=\"web\""));

    // The web role's HTTPS listener, trusted through the development CA in the data dir.
    let ca = test.data_dir().join("tls/ca.pem");
    let mut tls = tls_connect(web.addr("https"), &ca)
        .await
        .expect("TLS with the dev CA");
    assert_eq!(http_get_on(&mut tls, "/healthz").await.unwrap(), 200);

    for role in [web, db, mail, app] {
        role.stop().await.expect("role stops cleanly");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn health_reports_not_ready_once_shutdown_begins() {
    let test = TestConfig::new(Environment::Development);
    let web = RunningRole::start(Role::Web, &test, web_server::run).await;
    // Keep a connection open so the drain has something to wait for.
    let mut tls = tls_connect(web.addr("https"), &test.data_dir().join("tls/ca.pem"))
        .await
        .unwrap();
    assert_eq!(http_get_on(&mut tls, "/healthz").await.unwrap(), 200);
    web.shutdown().trigger();
    // The open keep-alive connection is closed gracefully rather than answered as ready.
    let after = http_get_on(&mut tls, "/healthz").await;
    assert!(after.is_err() || after.unwrap() == 503);
    web.stop().await.unwrap();
}
