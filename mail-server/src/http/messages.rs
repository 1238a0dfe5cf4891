//! Messages over HTTP:
//!
//! - `GET /api/v1/messages?query=…&page=…&per_page=…`: newest first, with the total;
//!   `query` takes `from:`, `to:`, `subject:`, `before:` and `after:` (YYYY-MM-DD),
//!   `has:attachment`, `is:unread`, `is:read`, `in:MAILBOX`, and free text (quotes group
//!   words);
//! - `GET /api/v1/messages/{id}`: headers, text, whether there is HTML, attachments;
//! - `GET …/{id}/raw`: the source; `GET …/{id}/parts/{part}`: an attachment, decoded;
//! - `GET …/{id}/html`: the HTML body under a policy that blocks scripts and remote content
//!   (`?remote=1` allows remote images and styles once the reader asks);
//! - `PATCH …/{id}` with `{"seen": true|false}`; `DELETE …/{id}`;
//! - `GET /api/v1/events`: a server-sent `change` event whenever a mailbox changes.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::header::{
    CONTENT_DISPOSITION, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use mail_parser::{MimeHeaders as _, PartType};
use serde_json::json;

use super::{Api, Viewer, caller, error, unavailable};
use crate::store::{Filter, Listed};

pub(super) fn routes() -> axum::Router<Api> {
    axum::Router::new()
        .route("/api/v1/messages", get(list))
        .route(
            "/api/v1/messages/{id}",
            get(show).patch(update).delete(remove),
        )
        .route("/api/v1/messages/{id}/raw", get(raw))
        .route("/api/v1/messages/{id}/html", get(html))
        .route("/api/v1/messages/{id}/parts/{part}", get(part))
        .route("/api/v1/events", get(events))
}

const PER_PAGE: i64 = 50;

/// Splits a search box's text into words, keeping `"quoted words"` (and `key:"quoted"`)
/// together.
fn words(query: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in query.chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !current.is_empty() {
                    words.push(std::mem::take(&mut current));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        words.push(current);
    }
    words
}

/// Midnight UTC of `YYYY-MM-DD`, in seconds since the epoch.
fn day(text: &str) -> Option<i64> {
    let date = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
    Some(date.and_hms_opt(0, 0, 0)?.and_utc().timestamp())
}

/// The search box's language as a store filter.
pub fn parse_query(query: &str) -> Filter {
    let mut filter = Filter::default();
    for word in words(query) {
        let Some((key, value)) = word.split_once(':') else {
            filter.text.push(word);
            continue;
        };
        let value = value.to_owned();
        match (
            key.to_ascii_lowercase().as_str(),
            value.to_ascii_lowercase().as_str(),
        ) {
            ("from", _) => filter.from.push(value),
            ("to", _) => filter.to.push(value),
            ("subject", _) => filter.subject.push(value),
            ("in", _) => filter.mailbox = Some(value),
            ("has", "attachment" | "attachments") => filter.has_attachment = Some(true),
            ("is", "unread") => filter.unread = Some(true),
            ("is", "read") => filter.unread = Some(false),
            ("before", _) if day(&value).is_some() => filter.before = day(&value),
            // "after:2026-11-24" includes that day.
            ("after", _) if day(&value).is_some() => filter.after = day(&value),
            _ => filter.text.push(word),
        }
    }
    filter
}

#[derive(Debug, serde::Deserialize)]
struct ListParams {
    #[serde(default)]
    query: String,
    page: Option<i64>,
    per_page: Option<i64>,
}

async fn list(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Query(params): Query<ListParams>,
) -> Response {
    let viewer = match caller(&api, &headers, peer.ip(), false).await {
        Ok(viewer) => viewer,
        Err(response) => return response,
    };
    let mut filter = parse_query(&params.query);
    filter.account = viewer.account().map(str::to_owned);
    let per_page = params.per_page.unwrap_or(PER_PAGE).clamp(1, 500);
    let page = params.page.unwrap_or(1).clamp(1, 1_000_000);
    match api
        .store
        .browse(&filter, (page - 1) * per_page, per_page)
        .await
    {
        Ok((messages, total)) => Json(json!({
            "messages": messages,
            "total": total,
            "page": page,
            "per_page": per_page,
        }))
        .into_response(),
        Err(_) => unavailable(),
    }
}

/// Message `id` with its bytes, if the viewer may see it.
async fn visible_message(
    api: &Api,
    headers: &HeaderMap,
    peer: std::net::IpAddr,
    id: i64,
    change: bool,
) -> Result<(Listed, Vec<u8>), Response> {
    let viewer = caller(api, headers, peer, change).await?;
    let not_found = || error(StatusCode::NOT_FOUND, "no such message");
    let (message, raw) = api
        .store
        .browse_one(id)
        .await
        .map_err(|_| unavailable())?
        .ok_or_else(not_found)?;
    match &viewer {
        Viewer::Account(account) if *account != message.account => Err(not_found()),
        _ => Ok((message, raw)),
    }
}

async fn show(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Response {
    let (message, raw) = match visible_message(&api, &headers, peer.ip(), id, false).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let Some(parsed) = mail_parser::MessageParser::default().parse(&raw[..]) else {
        return Json(
            json!({ "message": message, "headers": [], "text": null, "html": false,
            "attachments": [] }),
        )
        .into_response();
    };
    let header_list: Vec<(String, String)> = parsed
        .headers()
        .iter()
        .map(|header| {
            let start = (header.offset_start as usize).min(raw.len());
            let end = (header.offset_end as usize).clamp(start, raw.len());
            let value = String::from_utf8_lossy(&raw[start..end])
                .split(['\r', '\n'])
                .map(str::trim)
                .filter(|line| !line.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            (header.name.as_str().to_owned(), value)
        })
        .collect();
    let has_html = parsed.html_body.iter().any(|id| {
        matches!(
            parsed.parts.get(*id as usize).map(|p| &p.body),
            Some(PartType::Html(_))
        )
    });
    let attachments: Vec<_> = parsed
        .attachments
        .iter()
        .filter_map(|id| parsed.parts.get(*id as usize).map(|part| (*id, part)))
        .map(|(id, part)| {
            let content_type = part
                .content_type()
                .map(|ct| format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or("octet-stream")))
                .unwrap_or_else(|| "application/octet-stream".to_owned());
            json!({
                "part": id,
                "filename": part.attachment_name().unwrap_or("attachment"),
                "content_type": content_type,
                "size": part.contents().len(),
            })
        })
        .collect();
    let text = parsed.body_text(0).map(|text| text.into_owned());
    let cc = parsed.cc().map(|cc| {
        cc.iter()
            .filter_map(|addr| addr.address())
            .collect::<Vec<_>>()
            .join(", ")
    });
    Json(json!({
        "message": message,
        "cc": cc,
        "headers": header_list,
        "text": text,
        "html": has_html,
        "attachments": attachments,
    }))
    .into_response()
}

fn with_headers(body: Vec<u8>, headers: &[(axum::http::HeaderName, String)]) -> Response {
    let mut response = body.into_response();
    for (name, value) in headers {
        if let Ok(value) = HeaderValue::from_str(value) {
            response.headers_mut().insert(name.clone(), value);
        }
    }
    response.headers_mut().insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    response
}

async fn raw(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Response {
    match visible_message(&api, &headers, peer.ip(), id, false).await {
        Ok((_, raw)) => with_headers(
            raw,
            &[
                (CONTENT_TYPE, "text/plain; charset=utf-8".to_owned()),
                (CONTENT_SECURITY_POLICY, "sandbox".to_owned()),
            ],
        ),
        Err(response) => response,
    }
}

#[derive(Debug, serde::Deserialize)]
struct HtmlParams {
    #[serde(default)]
    remote: u8,
}

async fn html(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Query(params): Query<HtmlParams>,
) -> Response {
    let (_, raw) = match visible_message(&api, &headers, peer.ip(), id, false).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let body = mail_parser::MessageParser::default()
        .parse(&raw[..])
        .and_then(|parsed| parsed.body_html(0).map(|html| html.into_owned()))
        .unwrap_or_default();
    // No scripts, no forms, no plugins, a unique origin (sandbox); remote images, styles
    // and fonts only when the reader has asked for them.
    let policy = if params.remote == 1 {
        "default-src 'none'; img-src * data:; style-src * 'unsafe-inline'; font-src *; sandbox"
    } else {
        "default-src 'none'; img-src data:; style-src 'unsafe-inline'; sandbox"
    };
    with_headers(
        body.into_bytes(),
        &[
            (CONTENT_TYPE, "text/html; charset=utf-8".to_owned()),
            (CONTENT_SECURITY_POLICY, policy.to_owned()),
            // Remote images, once allowed, do not learn where they are shown.
            (REFERRER_POLICY, "no-referrer".to_owned()),
        ],
    )
}

async fn part(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Path((id, part)): Path<(i64, usize)>,
) -> Response {
    let (_, raw) = match visible_message(&api, &headers, peer.ip(), id, false).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let Some(parsed) = mail_parser::MessageParser::default().parse(&raw[..]) else {
        return error(StatusCode::NOT_FOUND, "no such part");
    };
    let Some(found) = parsed
        .parts
        .get(part)
        .filter(|p| !matches!(p.body, PartType::Multipart(_)))
    else {
        return error(StatusCode::NOT_FOUND, "no such part");
    };
    let content_type = found
        .content_type()
        .map(|ct| format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or("octet-stream")))
        .filter(|ct| ct.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or_else(|| "application/octet-stream".to_owned());
    // A name for the download, without what could end the header's quoted string.
    let filename: String = found
        .attachment_name()
        .unwrap_or("attachment")
        .chars()
        .filter(|c| !c.is_control() && !matches!(c, '"' | '\\'))
        .collect();
    let disposition = format!(
        "attachment; filename=\"{}\"; filename*=UTF-8''{}",
        filename.replace(|c: char| !c.is_ascii(), "_"),
        percent_encoding::utf8_percent_encode(&filename, percent_encoding::NON_ALPHANUMERIC)
    );
    with_headers(
        found.contents().to_vec(),
        &[
            (CONTENT_TYPE, content_type),
            (CONTENT_DISPOSITION, disposition),
            (CONTENT_SECURITY_POLICY, "sandbox".to_owned()),
        ],
    )
}

#[derive(Debug, serde::Deserialize)]
struct Update {
    seen: bool,
}

async fn update(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Json(update): Json<Update>,
) -> Response {
    let (message, _) = match visible_message(&api, &headers, peer.ip(), id, true).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    match api.store.set_seen(&message, update.seen).await {
        Ok(()) => Json(json!({ "id": id, "seen": update.seen })).into_response(),
        Err(_) => unavailable(),
    }
}

async fn remove(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Response {
    let (message, _) = match visible_message(&api, &headers, peer.ip(), id, true).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    match api.store.delete_message(&message).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(_) => unavailable(),
    }
}

async fn events(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let viewer = match caller(&api, &headers, peer.ip(), false).await {
        Ok(viewer) => viewer,
        Err(response) => return response,
    };
    let store = api.store.clone();
    let account = viewer.account().map(str::to_owned);
    // An account hears only of changes to its own mailboxes, not when others get mail.
    let last = match &account {
        Some(account) => store.account_version(account).await.ok(),
        None => None,
    };
    let state = (api.store.changes(), store, account, last);
    let stream = futures_util::stream::unfold(state, |state| async move {
        let (mut changes, store, account, mut last) = state;
        loop {
            changes.changed().await.ok()?;
            // Changes that come in a burst (a batch of deliveries) make one event.
            tokio::time::sleep(Duration::from_millis(100)).await;
            changes.mark_unchanged();
            if let Some(account) = &account {
                let now = store.account_version(account).await.ok();
                if now == last {
                    continue;
                }
                last = now;
            }
            let event: Result<Event, Infallible> = Ok(Event::default().event("change").data("{}"));
            return Some((event, (changes, store, account, last)));
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_search_language() {
        let filter = parse_query(
            "from:ann subject:\"quarterly report\" is:unread has:attachment before:2026-11-25 \
             after:2026-11-01 in:Sent budget \"exact words\" to:bob@x.test",
        );
        assert_eq!(filter.from, vec!["ann"]);
        assert_eq!(filter.to, vec!["bob@x.test"]);
        assert_eq!(filter.subject, vec!["quarterly report"]);
        assert_eq!(filter.text, vec!["budget", "exact words"]);
        assert_eq!(filter.unread, Some(true));
        assert_eq!(filter.has_attachment, Some(true));
        assert_eq!(filter.before, Some(1_795_564_800));
        assert_eq!(filter.after, Some(1_793_491_200));
        assert_eq!(filter.mailbox.as_deref(), Some("Sent"));
        // Unknown keys and bad dates are just words.
        let filter = parse_query("before:yesterday colour:red");
        assert_eq!(filter.text, vec!["before:yesterday", "colour:red"]);
        assert_eq!(filter.before, None);
    }
}
