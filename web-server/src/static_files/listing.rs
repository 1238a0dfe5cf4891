//! Directory listings: an HTML page, or JSON for `Accept: application/json`. Dot-files and
//! symlinks that leave the root are not listed.

use std::path::Path;

use axum::body::Body;
use axum::http::HeaderValue;
use axum::http::header::CONTENT_TYPE;
use axum::response::Response;
use serde::Serialize;

#[derive(Serialize)]
struct Item {
    name: String,
    directory: bool,
    size: u64,
    modified: String,
}

pub fn render(
    dir: &Path,
    url_path: &str,
    json: bool,
    root: &Path,
    allow_escape: bool,
) -> Option<Response> {
    let mut items = Vec::new();
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        if !allow_escape
            && !std::fs::canonicalize(entry.path()).is_ok_and(|real| real.starts_with(root))
        {
            continue;
        }
        let Ok(meta) = std::fs::metadata(entry.path()) else {
            continue;
        };
        items.push(Item {
            name,
            directory: meta.is_dir(),
            size: meta.len(),
            modified: meta
                .modified()
                .map(httpdate::fmt_http_date)
                .unwrap_or_default(),
        });
    }
    items.sort_by(|a, b| b.directory.cmp(&a.directory).then(a.name.cmp(&b.name)));

    let (body, content_type) = if json {
        (serde_json::to_string(&items).ok()?, "application/json")
    } else {
        let title = escape(url_path);
        let mut html = format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>Index of {title}</title>\
             <style>body{{font-family:system-ui,sans-serif;margin:2rem}}td{{padding:.15rem 1rem .15rem 0}}</style>\
             </head><body><h1>Index of {title}</h1><table><tr><th align=left>Name</th><th align=right>Size</th><th align=left>Modified</th></tr>"
        );
        if url_path != "/" {
            html.push_str("<tr><td><a href=\"../\">../</a></td><td></td><td></td></tr>");
        }
        for item in &items {
            let suffix = if item.directory { "/" } else { "" };
            let href: String = percent_encoding::utf8_percent_encode(
                &item.name,
                percent_encoding::NON_ALPHANUMERIC,
            )
            .collect();
            html.push_str(&format!(
                "<tr><td><a href=\"{href}{suffix}\">{}{suffix}</a></td><td align=right>{}</td><td>{}</td></tr>",
                escape(&item.name),
                if item.directory { String::new() } else { item.size.to_string() },
                escape(&item.modified)
            ));
        }
        html.push_str("</table></body></html>\n");
        (html, "text/html; charset=utf-8")
    };
    let mut response = Response::new(Body::from(body));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    Some(response)
}

/// Minimal HTML escaping for text and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}
