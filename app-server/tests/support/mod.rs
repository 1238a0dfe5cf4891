//! Helpers shared by app-server's integration tests: the fixture app as an upload, and calls
//! to the control API and the router with curl.

#![allow(clippy::unwrap_used, dead_code)] // helpers; not every test file uses each one

use std::path::Path;

use common::testing::curl;

pub const AUTH: &str = "Authorization: Bearer dev";

/// The fixture app as a tar.gz, with `VERSION` and optionally another Procfile.
pub fn tarball(version: &str, procfile: Option<&str>) -> Vec<u8> {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hello");
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(gz);
    let mut add = |name: &str, data: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, name, data).unwrap();
    };
    add("app.py", &std::fs::read(fixture.join("app.py")).unwrap());
    let default_procfile = std::fs::read_to_string(fixture.join("Procfile")).unwrap();
    add("Procfile", procfile.unwrap_or(&default_procfile).as_bytes());
    add("VERSION", version.as_bytes());
    builder.into_inner().unwrap().finish().unwrap()
}

pub fn upload(api: &str, app: &str, archive: &[u8], dir: &Path) -> (u16, serde_json::Value) {
    let file = dir.join(format!("upload-{}.tar.gz", archive.len()));
    std::fs::write(&file, archive).unwrap();
    let (status, body) = curl(&[
        "-X",
        "POST",
        "-H",
        AUTH,
        "-H",
        "Accept: application/json",
        "--data-binary",
        &format!("@{}", file.display()),
        &format!("{api}/apps/{app}/builds"),
    ]);
    (
        status,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body)),
    )
}

pub fn via_router(router: &str, app: &str) -> (u16, serde_json::Value) {
    let (status, body) = curl(&[
        "-H",
        &format!("Host: {app}.localhost"),
        &format!("{router}/"),
    ]);
    (
        status,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body)),
    )
}

/// `METHOD {api}{path}` with an optional JSON body; the status and the parsed answer (a JSON
/// string holding the text when the answer is not JSON).
pub fn call(api: &str, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
    let url = format!("{api}{path}");
    let mut args = vec!["-X", method, "-H", AUTH];
    if let Some(body) = body {
        args.extend(["-H", "Content-Type: application/json", "-d", body]);
    }
    args.push(&url);
    let (status, text) = curl(&args);
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

/// Lets the unprivileged users apps run as (when tests run as root) reach the builds.
pub fn open_to_apps(dir: &Path) {
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}
