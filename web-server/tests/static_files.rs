//! Static files as a browser, curl and a download manager see them.

#![allow(clippy::unwrap_used)] // helpers outside #[test] functions

mod support;

use common::Environment;
use support::{curl_async as curl, start};

const SITE: &str = r#"
[[web.sites]]
root = "{ROOT}"
listing = true
error_pages = { 404 = "errors/404.html" }
"#;

fn files() -> Vec<(&'static str, &'static [u8])> {
    vec![
        ("index.html", b"<h1>home</h1>"),
        ("style.css", b"body { color: red }"),
        ("app.js", b"console.log(1)"),
        ("data.json", b"{\"a\":1}"),
        ("logo.png", b"\x89PNG\r\n\x1a\nnot really"),
        ("docs/index.html", b"<h1>docs</h1>"),
        ("docs/guide.txt", b"guide"),
        ("errors/404.html", b"<h1>custom not found</h1>"),
        (".env", b"SECRET=1"),
        ("sub/.git/config", b"[core]"),
        ("empty/.keep", b""),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn get_head_mime_index_and_hidden_files() {
    let web = start(Environment::Development, &files(), SITE, &[]).await;

    let home = curl(&[&web.url("/")]).await;
    assert_eq!(home.status, 200);
    assert_eq!(home.text(), "<h1>home</h1>");
    assert_eq!(
        home.header("content-type"),
        Some("text/html; charset=utf-8")
    );

    for (path, mime) in [
        ("/style.css", "text/css; charset=utf-8"),
        ("/app.js", "text/javascript; charset=utf-8"),
        ("/data.json", "application/json; charset=utf-8"),
        ("/logo.png", "image/png"),
    ] {
        let reply = curl(&[&web.url(path)]).await;
        assert_eq!(reply.status, 200, "{path}");
        assert_eq!(reply.header("content-type"), Some(mime), "{path}");
    }

    // HEAD: same headers, no body.
    let head = curl(&["-I", &web.url("/style.css")]).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("19"));
    // (curl -I writes the headers where the body would go; the body itself is absent.)
    assert!(!head.text().contains("color: red"));

    // Directories: redirect to the slash form (query kept), then the index.
    let redirect = curl(&[&web.url("/docs?x=1")]).await;
    assert_eq!(redirect.status, 301);
    assert_eq!(redirect.header("location"), Some("/docs/?x=1"));
    assert_eq!(curl(&[&web.url("/docs/")]).await.text(), "<h1>docs</h1>");

    // Dot-files are not served, at any depth; the site's 404 page is.
    for path in ["/.env", "/sub/.git/config", "/%2eenv"] {
        let reply = curl(&["--path-as-is", &web.url(path)]).await;
        assert_eq!(reply.status, 404, "{path}");
        assert!(!reply.text().contains("SECRET"), "{path}");
    }
    let missing = curl(&[&web.url("/nope.html")]).await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.text(), "<h1>custom not found</h1>");

    // Other methods are refused with Allow.
    let post = curl(&["-X", "POST", &web.url("/style.css")]).await;
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));

    // Every response carries the security headers.
    assert_eq!(home.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(home.header("x-frame-options"), Some("SAMEORIGIN"));
    assert_eq!(
        home.header("referrer-policy"),
        Some("strict-origin-when-cross-origin")
    );
    assert_eq!(
        home.header("strict-transport-security"),
        None,
        "no HSTS in development"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn directory_listing_in_html_and_json() {
    let web = start(Environment::Development, &files(), SITE, &[]).await;
    let html = curl(&[&web.url("/empty/")]).await;
    assert_eq!(html.status, 200);
    assert!(html.text().contains("Index of /empty/"), "{}", html.text());
    assert!(!html.text().contains(".keep"), "dot-files are not listed");

    let root_listing = curl(&["-H", "Accept: application/json", &web.url("/docs/")]).await;
    // /docs/ has an index: the index wins over the listing.
    assert_eq!(root_listing.text(), "<h1>docs</h1>");

    std::fs::remove_file(web.root.join("docs/index.html")).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let json = curl(&["-H", "Accept: application/json", &web.url("/docs/")]).await;
    assert_eq!(json.header("content-type"), Some("application/json"));
    let items = support::json(&json);
    assert_eq!(items[0]["name"], "guide.txt");
    assert_eq!(items[0]["size"], 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn validators_and_conditional_requests() {
    let web = start(Environment::Development, &files(), SITE, &[]).await;
    let url = web.url("/style.css");
    let first = curl(&[&url]).await;
    let etag = first.header("etag").unwrap().to_owned();
    let modified = first.header("last-modified").unwrap().to_owned();
    assert!(
        etag.starts_with('"') && !etag.starts_with("W/"),
        "strong ETag: {etag}"
    );

    let inm = curl(&["-H", &format!("If-None-Match: {etag}"), &url]).await;
    assert_eq!(inm.status, 304);
    assert!(inm.body.is_empty());
    assert_eq!(inm.header("etag"), Some(etag.as_str()));

    let weak = curl(&["-H", &format!("If-None-Match: W/{etag}"), &url]).await;
    assert_eq!(weak.status, 304, "If-None-Match compares weakly");

    let ims = curl(&["-H", &format!("If-Modified-Since: {modified}"), &url]).await;
    assert_eq!(ims.status, 304);
    let old = curl(&[
        "-H",
        "If-Modified-Since: Mon, 01 Jan 2001 00:00:00 GMT",
        &url,
    ])
    .await;
    assert_eq!(old.status, 200);

    let other = curl(&["-H", "If-None-Match: \"something-else\"", &url]).await;
    assert_eq!(other.status, 200);

    let failed = curl(&["-H", "If-Match: \"something-else\"", &url]).await;
    assert_eq!(failed.status, 412);

    // If-Range: a current ETag keeps the range, a stale one gets the whole file.
    let ranged = curl(&["-r", "0-3", "-H", &format!("If-Range: {etag}"), &url]).await;
    assert_eq!(ranged.status, 206);
    assert_eq!(ranged.text(), "body");
    let stale = curl(&["-r", "0-3", "-H", "If-Range: \"old\"", &url]).await;
    assert_eq!(stale.status, 200);
    assert_eq!(stale.text(), "body { color: red }");
}

#[tokio::test(flavor = "multi_thread")]
async fn ranges_single_multiple_and_unsatisfiable_from_memory_and_disk() {
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let big: &'static [u8] = Box::leak(big.into_boxed_slice());
    let mut all = files();
    all.push(("big.bin", big));
    // Files over 64 KiB are streamed from disk, smaller ones served from memory.
    let web = start(
        Environment::Development,
        &all,
        SITE,
        &[("web.cache_max_file_bytes", "65536")],
    )
    .await;
    for (path, content) in [
        ("/style.css", &b"body { color: red }"[..]),
        ("/big.bin", big),
    ] {
        let url = web.url(path);
        let len = content.len();
        let one = curl(&["-r", "2-5", &url]).await;
        assert_eq!(one.status, 206, "{path}");
        assert_eq!(one.body, &content[2..6]);
        assert_eq!(
            one.header("content-range"),
            Some(format!("bytes 2-5/{len}").as_str())
        );

        let suffix = curl(&["-r", "-3", &url]).await;
        assert_eq!(suffix.body, &content[len - 3..]);

        let multi = curl(&["-r", "0-1,4-5", &url]).await;
        assert_eq!(multi.status, 206);
        let content_type = multi.header("content-type").unwrap();
        assert!(
            content_type.starts_with("multipart/byteranges; boundary="),
            "{content_type}"
        );
        let boundary = content_type.split("boundary=").nth(1).unwrap();
        let text = String::from_utf8_lossy(&multi.body).into_owned();
        assert_eq!(text.matches(&format!("--{boundary}")).count(), 3, "{text}");
        assert!(text.contains(&format!("Content-Range: bytes 0-1/{len}")));
        assert!(text.contains(&format!("Content-Range: bytes 4-5/{len}")));
        assert_eq!(
            multi
                .header("content-length")
                .unwrap()
                .parse::<usize>()
                .unwrap(),
            multi.body.len()
        );

        let unsatisfiable = curl(&["-r", &format!("{}-", len + 10), &url]).await;
        assert_eq!(unsatisfiable.status, 416);
        assert_eq!(
            unsatisfiable.header("content-range"),
            Some(format!("bytes */{len}").as_str())
        );
    }
    // The whole large file streams intact.
    let whole = curl(&[&web.url("/big.bin")]).await;
    assert_eq!(whole.body, big);
}

#[tokio::test(flavor = "multi_thread")]
async fn precompressed_sidecars_and_on_the_fly_compression() {
    let css = "body { margin: 0 }\n".repeat(200);
    let gz = {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(css.as_bytes()).unwrap();
        encoder.finish().unwrap()
    };
    let css: &'static [u8] = Box::leak(css.into_bytes().into_boxed_slice());
    let gz: &'static [u8] = Box::leak(gz.into_boxed_slice());
    let text: &'static [u8] = Box::leak(
        "hello compression "
            .repeat(500)
            .into_bytes()
            .into_boxed_slice(),
    );
    let png: &'static [u8] = Box::leak(vec![7u8; 5000].into_boxed_slice());
    let web = start(
        Environment::Development,
        &[
            ("site.css", css),
            ("site.css.gz", gz),
            ("notes.txt", text),
            ("photo.png", png),
        ],
        SITE,
        &[],
    )
    .await;

    // The .gz sidecar is served as-is when gzip is acceptable.
    let gzip = curl(&["-H", "Accept-Encoding: gzip", &web.url("/site.css")]).await;
    assert_eq!(gzip.header("content-encoding"), Some("gzip"));
    assert_eq!(gzip.body, gz, "the precompressed file itself");
    assert_eq!(gzip.header("vary"), Some("Accept-Encoding"));
    assert_eq!(gzip.header("content-type"), Some("text/css; charset=utf-8"));

    // br preferred when offered: no .br sidecar, so compressed on the fly.
    let br = curl(&["-H", "Accept-Encoding: gzip, br", &web.url("/site.css")]).await;
    assert_eq!(br.header("content-encoding"), Some("br"));
    assert_ne!(
        br.header("etag"),
        gzip.header("etag"),
        "each coding has its own ETag"
    );

    let zstd = curl(&["-H", "Accept-Encoding: zstd", &web.url("/notes.txt")]).await;
    assert_eq!(zstd.header("content-encoding"), Some("zstd"));
    assert!(zstd.body.len() < text.len());

    // curl --compressed decodes what it asked for.
    let decoded = curl(&["--compressed", &web.url("/notes.txt")]).await;
    assert_eq!(decoded.body, text);

    // Identity when nothing is acceptable, never for ranges, never for images.
    let plain = curl(&[&web.url("/notes.txt")]).await;
    assert_eq!(plain.header("content-encoding"), None);
    assert_eq!(plain.body, text);
    let ranged = curl(&[
        "-H",
        "Accept-Encoding: gzip, br",
        "-r",
        "0-4",
        &web.url("/notes.txt"),
    ])
    .await;
    assert_eq!(ranged.status, 206);
    assert_eq!(ranged.header("content-encoding"), None);
    assert_eq!(ranged.text(), "hello");
    let image = curl(&["-H", "Accept-Encoding: gzip, br", &web.url("/photo.png")]).await;
    assert_eq!(image.header("content-encoding"), None);

    // A conditional request against a compressed representation uses its own ETag.
    let etag = br.header("etag").unwrap();
    let again = curl(&[
        "-H",
        "Accept-Encoding: gzip, br",
        "-H",
        &format!("If-None-Match: {etag}"),
        &web.url("/site.css"),
    ])
    .await;
    assert_eq!(again.status, 304);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cache_notices_changed_files() {
    let web = start(
        Environment::Development,
        &files(),
        SITE,
        &[("web.cache_validity_ms", "200")],
    )
    .await;
    let url = web.url("/docs/guide.txt");
    assert_eq!(curl(&[&url]).await.text(), "guide");
    std::fs::write(web.root.join("docs/guide.txt"), "guide, second edition").unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let after = curl(&[&url]).await;
    assert_eq!(after.text(), "guide, second edition");
    std::fs::remove_file(web.root.join("docs/guide.txt")).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_eq!(curl(&[&url]).await.status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn spa_fallback_serves_the_app_for_html_navigations_only() {
    let toml = r#"
[[web.sites]]
root = "{ROOT}"
spa_fallback = "index.html"
"#;
    let web = start(Environment::Development, &files(), toml, &[]).await;
    let page = curl(&[
        "-H",
        "Accept: text/html,application/xhtml+xml",
        &web.url("/app/settings"),
    ])
    .await;
    assert_eq!(page.status, 200);
    assert_eq!(page.text(), "<h1>home</h1>");
    let api = curl(&["-H", "Accept: application/json", &web.url("/app/settings")]).await;
    assert_eq!(api.status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_welcome_page_shows_every_role_in_development() {
    // No site configured and no index file: the welcome page.
    let web = start(Environment::Development, &[], "", &[]).await;
    std::fs::remove_dir_all(&web.root).ok();
    let page = curl(&[&web.url("/")]).await;
    assert_eq!(page.status, 200);
    for role in [
        "Web server",
        "Database server",
        "Mail server",
        "Application server",
    ] {
        assert!(page.text().contains(role), "{role}");
    }
    let status = curl(&[&web.url("/_quartet/status")]).await;
    let roles = support::json(&status);
    assert_eq!(roles.as_array().unwrap().len(), 4);
    assert_eq!(roles[0]["role"], "web");
    // The test binds port 0, so the configured address is not the bound one; the probe just
    // must not hang or fail the page.
    assert!(roles[1]["listeners"].as_array().unwrap().len() >= 2);
}
