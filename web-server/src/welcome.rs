//! The development welcome page: what the four roles are, where each listens, and whether it
//! answers right now (the page polls `/_quartet/status`, which probes each role's `/healthz`).

use axum::body::Body;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode, Uri};
use axum::response::Response;
use common::Config;
use serde::Serialize;

use common::proxy::Proxy;

#[derive(Serialize)]
struct RoleStatus {
    role: &'static str,
    health_url: String,
    listeners: Vec<(String, String)>,
    up: Option<bool>,
}

fn roles(config: &Config) -> Vec<(RoleStatus, Option<Uri>)> {
    let scheme = |tls: bool| if tls { "https" } else { "http" };
    let make =
        |role, tls: bool, health: &common::config::ListenAddr, listeners: Vec<(&str, String)>| {
            let health_url = format!("{}://{}/healthz", scheme(tls), health);
            let probe = (!tls).then(|| health_url.parse().ok()).flatten();
            (
                RoleStatus {
                    role,
                    health_url,
                    listeners: listeners
                        .into_iter()
                        .map(|(name, addr)| (name.to_owned(), addr))
                        .collect(),
                    up: None,
                },
                probe,
            )
        };
    let c = config;
    vec![
        make(
            "web",
            false,
            &c.web.http_listen,
            vec![
                ("http", c.web.http_listen.to_string()),
                ("https", c.web.https_listen.to_string()),
            ],
        ),
        make(
            "db",
            c.db.http_tls,
            &c.db.http_listen,
            vec![
                ("postgresql", c.db.pg_listen.to_string()),
                ("http api", c.db.http_listen.to_string()),
            ],
        ),
        make(
            "mail",
            c.mail.http_tls,
            &c.mail.http_listen,
            vec![
                ("smtp", c.mail.smtp_listen.to_string()),
                ("submission", c.mail.submission_listen.to_string()),
                ("imap", c.mail.imap_listen.to_string()),
                ("pop3", c.mail.pop3_listen.to_string()),
                ("web inbox", c.mail.http_listen.to_string()),
            ],
        ),
        make(
            "app",
            c.app.api_tls,
            &c.app.api_listen,
            vec![
                ("control api", c.app.api_listen.to_string()),
                ("apps", c.app.http_listen.to_string()),
            ],
        ),
    ]
}

/// `GET /_quartet/status`: every role's address and whether its `/healthz` answers 200.
pub async fn status(config: &Config, proxy: &Proxy) -> Response {
    let mut out = Vec::new();
    for (mut status, probe) in roles(config) {
        if let Some(uri) = probe {
            status.up = Some(proxy.probe(uri).await == Some(StatusCode::OK));
        }
        out.push(status);
    }
    let body = serde_json::to_string(&out).unwrap_or_else(|_| "[]".into());
    let mut response = Response::new(Body::from(body));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

pub fn page(config: &Config) -> Response {
    let root = config.web_root();
    let html = PAGE.replace(
        "{{ROOT}}",
        &crate::static_files::escape_html(&root.display().to_string()),
    );
    let mut response = Response::new(Body::from(html));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

const PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>Quartet: your server room</title>
<style>
body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222;line-height:1.5}
h1{margin-bottom:.2rem}.sub{color:#666;margin-top:0}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(13rem,1fr));gap:1rem;margin:1.5rem 0}
.card{border:1px solid #ddd;border-radius:.6rem;padding:1rem}
.card h2{margin:.1rem 0 .4rem;font-size:1.15rem}
.state{float:right;font-size:.8rem;padding:.1rem .5rem;border-radius:1rem;background:#eee}
.up{background:#d8f5dc;color:#14622a}.down{background:#fbe0e0;color:#8a1c1c}
code{background:#f4f4f4;padding:0 .25rem;border-radius:.2rem}
ul{padding-left:1.1rem;margin:.3rem 0}small{color:#666}
</style></head><body>
<h1>Quartet</h1>
<p class="sub">One machine, four servers. This page is the web server's default site in development.</p>
<div class="grid">
<div class="card" id="web"><span class="state">…</span><h2>Web server</h2>
<p>Answers browsers: serves files from a document root and forwards requests to apps (a <em>reverse proxy</em>), over HTTP/1.1 and HTTP/2 with TLS.</p><ul class="l"></ul></div>
<div class="card" id="db"><span class="state">…</span><h2>Database server</h2>
<p>Stores data in tables you query with SQL, over the PostgreSQL protocol (try <code>psql</code>) or an HTTP API.</p><ul class="l"></ul></div>
<div class="card" id="mail"><span class="state">…</span><h2>Mail server</h2>
<p>Receives mail over SMTP, keeps mailboxes, and lets mail clients read them over IMAP or POP3.</p><ul class="l"></ul></div>
<div class="card" id="app"><span class="state">…</span><h2>Application server</h2>
<p>Takes an app's source code, builds it, runs it and keeps it running; the web server sends it traffic.</p><ul class="l"></ul></div>
</div>
<p>Put an <code>index.html</code> in <code>{{ROOT}}</code> and it replaces this page.
Each role answers <code>/healthz</code> (is it ready?) and <code>/metrics</code> (Prometheus numbers) on its HTTP address.</p>
<small>Status refreshes every few seconds.</small>
<script>
async function refresh(){
  try{
    const roles=await (await fetch('/_quartet/status')).json();
    for(const r of roles){
      const card=document.getElementById(r.role); if(!card) continue;
      const s=card.querySelector('.state');
      s.textContent=r.up===null?'TLS':(r.up?'up':'down');
      s.className='state '+(r.up===null?'':(r.up?'up':'down'));
      card.querySelector('.l').innerHTML=r.listeners.map(([n,a])=>'<li>'+n+': <code>'+a+'</code></li>').join('');
    }
  }catch(e){}
}
refresh(); setInterval(refresh,3000);
</script>
</body></html>
"#;
