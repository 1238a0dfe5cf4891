//! The control API on `app.api_listen`: bearer-token authenticated JSON (the README lists
//! every route with an example).

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::json;
use sha2::Digest;

use crate::apps::{Apps, DeployError};
use crate::store::{AppSettings, Store, StoreError, valid_app_name};

#[derive(Debug, Clone)]
pub struct Api {
    pub store: Store,
    pub apps: Arc<Apps>,
    pub token: Arc<str>,
    pub max_upload_bytes: usize,
    /// Ends live log streams when the role stops.
    pub shutdown: common::Shutdown,
    /// `app.domain`, lowercase, without a leading dot.
    pub app_domain: Arc<str>,
}

/// Runs a deploy-like operation in its own task, so it finishes even if the client goes away
/// (a half-done switch is worse than an unanswered request).
async fn detached<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, DeployError>> + Send + 'static,
) -> Result<T, DeployError> {
    tokio::spawn(work)
        .await
        .unwrap_or_else(|err| Err(DeployError::Internal(format!("task failed: {err}"))))
}

// Bodies are parsed as JSON whatever their Content-Type, so `curl -d '{...}'` just works.

/// The authenticated routes; the caller merges `/healthz` and `/metrics` (public) beside them.
pub fn router(api: Api) -> Router {
    let token = Arc::clone(&api.token);
    Router::new()
        .route("/apps", get(list_apps).post(create_app))
        .route(
            "/apps/{name}",
            get(get_app).patch(patch_app).delete(delete_app),
        )
        .route("/apps/{name}/restart", axum::routing::post(restart))
        .route("/apps/{name}/builds", axum::routing::post(create_build))
        .route(
            "/apps/{name}/releases",
            get(list_releases).post(release_build),
        )
        .route("/apps/{name}/promote", axum::routing::post(promote))
        .route("/builds/{hash}", axum::routing::put(receive_build))
        .route("/apps/{name}/config", get(get_config).put(put_config))
        .route("/apps/{name}/rollback", axum::routing::post(rollback))
        .route("/apps/{name}/formation", axum::routing::put(put_formation))
        .route("/apps/{name}/logs", get(logs))
        .with_state(api)
        .layer(axum::middleware::from_fn(
            move |request: Request, next: Next| {
                let token = Arc::clone(&token);
                async move { require_token(&token, request, next).await }
            },
        ))
}

async fn require_token(token: &str, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !constant_time_eq(presented.as_bytes(), token.as_bytes()) {
        let mut response = error(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    }
    next.run(request).await
}

/// Compares without stopping at the first difference, so timing does not reveal the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

fn store_error(err: StoreError) -> Response {
    match err {
        StoreError::Exists(_) | StoreError::DomainTaken { .. } => {
            error(StatusCode::CONFLICT, &err.to_string())
        }
        StoreError::NotFound(_) => error(StatusCode::NOT_FOUND, &err.to_string()),
        other => {
            tracing::error!(error = %other, "store failure");
            error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewApp {
    name: String,
    domains: Option<Vec<String>>,
    health_path: Option<String>,
}

async fn create_app(State(api): State<Api>, body: axum::body::Bytes) -> Response {
    let new = match serde_json::from_slice::<NewApp>(&body) {
        Ok(new) => new,
        Err(err) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "expected a JSON body like {{\"name\":\"hello\",\"domains\":[\"hello.example.org\"],\"health_path\":\"/up\"}}: {err}"
                ),
            );
        }
    };
    if !valid_app_name(&new.name) {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "an app name is 1-63 lowercase letters, digits and '-', not starting or ending with '-'",
        );
    }
    let mut settings = AppSettings {
        domains: new.domains,
        health_path: new.health_path.map(Some),
    };
    if let Err(response) = check_settings(&api, &new.name, &mut settings) {
        return *response;
    }
    match api.store.create_app(&new.name, &settings).await {
        Ok(app) => {
            let _ = api.apps.refresh_domains().await;
            (StatusCode::CREATED, Json(app)).into_response()
        }
        Err(err) => store_error(err),
    }
}

/// `PATCH /apps/{name} {"domains":[…],"health_path":"/up"}`: changes take effect for routing at
/// once, and for health checks at the next deploy or restart.
async fn patch_app(
    State(api): State<Api>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let mut settings = match serde_json::from_slice::<AppSettings>(&body) {
        Ok(settings) => settings,
        Err(err) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("expected {{\"domains\":[…],\"health_path\":\"/up\" or null}}: {err}"),
            );
        }
    };
    if let Err(response) = check_settings(&api, &name, &mut settings) {
        return *response;
    }
    match api.store.update_app(&name, &settings).await {
        Ok(app) => {
            let _ = api.apps.refresh_domains().await;
            Json(app).into_response()
        }
        Err(err) => store_error(err),
    }
}

/// Domains are host names (lowercased here), each routed to one app; a health path is an
/// absolute path of printable characters.
fn check_settings(api: &Api, app: &str, settings: &mut AppSettings) -> Result<(), Box<Response>> {
    if let Some(domains) = &mut settings.domains {
        if domains.len() > 100 {
            return Err(Box::new(error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "at most 100 domains per app",
            )));
        }
        let taken = api.apps.domains.load();
        for domain in domains.iter_mut() {
            *domain = domain.trim_end_matches('.').to_ascii_lowercase();
            if !common::config::valid_host_name(domain) {
                return Err(Box::new(error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &format!("{domain:?} is not a host name"),
                )));
            }
            // `{name}.{app.domain}` belongs to the app called `name`, whether it exists yet
            // or not: no app may take another's address.
            if **domain == *api.app_domain || domain.ends_with(&format!(".{}", api.app_domain)) {
                return Err(Box::new(error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &format!(
                        "{domain} is under app.domain ({}), where app names are routed",
                        api.app_domain
                    ),
                )));
            }
            if let Some(owner) = taken.get(domain.as_str()).filter(|owner| *owner != app) {
                return Err(Box::new(error(
                    StatusCode::CONFLICT,
                    &format!("{domain} already routes to the app {owner}"),
                )));
            }
        }
        domains.sort();
        domains.dedup();
    }
    if let Some(Some(path)) = &settings.health_path
        && (!path.starts_with('/')
            || path.len() > 1024
            || path.chars().any(|c| c.is_ascii_control() || c == ' '))
    {
        return Err(Box::new(error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "a health path starts with '/' and has no spaces or control characters",
        )));
    }
    Ok(())
}

/// `POST /apps/{name}/restart`: new processes of the current release replace the old ones the
/// same way a deploy does (started, checked, switched, drained).
async fn restart(State(api): State<Api>, Path(name): Path<String>) -> Response {
    let apps = Arc::clone(&api.apps);
    match detached(async move { apps.restart(&name).await }).await {
        Ok(Some(version)) => {
            Json(json!({ "status": "restarted", "release": version })).into_response()
        }
        Ok(None) => error(
            StatusCode::CONFLICT,
            "the app has no release to restart yet",
        ),
        Err(err) => deploy_error(err),
    }
}

async fn list_apps(State(api): State<Api>) -> Response {
    match api.store.list_apps().await {
        Ok(apps) => Json(apps).into_response(),
        Err(err) => store_error(err),
    }
}

async fn get_app(State(api): State<Api>, Path(name): Path<String>) -> Response {
    let app = match api.store.get_app(&name).await {
        Ok(app) => app,
        Err(err) => return store_error(err),
    };
    let release = api.store.current_release(&name).await.ok().flatten();
    let formation = api.store.formation(&name).await.unwrap_or_default();
    let processes = api.apps.status(&name).await;
    Json(json!({
        "name": app.name,
        "created_at": app.created_at,
        "domains": app.domains,
        "health_path": app.health_path,
        "release": release.as_ref().map(|r| r.version),
        "build": release.as_ref().map(|r| r.build.clone()),
        "formation": formation,
        "processes": processes,
        "schedules": api.apps.schedules(&name),
    }))
    .into_response()
}

/// `PUT /apps/{name}/formation {"web": 2, "worker": 1}`: how many of each process type run.
async fn put_formation(
    State(api): State<Api>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let Ok(counts) = serde_json::from_slice::<std::collections::BTreeMap<String, u32>>(&body)
    else {
        return error(StatusCode::BAD_REQUEST, "expected {\"web\": N, ...}");
    };
    if counts.values().any(|count| *count > 20) {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "at most 20 processes of a type",
        );
    }
    let apps = Arc::clone(&api.apps);
    let scaled = counts.clone();
    let outcome = detached(async move { apps.scale(&name, &scaled).await }).await;
    match outcome {
        Ok(()) => Json(json!({ "formation": counts })).into_response(),
        Err(err) => deploy_error(err),
    }
}

async fn delete_app(State(api): State<Api>, Path(name): Path<String>) -> Response {
    // After any deploy of the app in progress (which it waits for), in its own task.
    let apps = Arc::clone(&api.apps);
    match tokio::spawn(async move { apps.delete(&name).await }).await {
        Ok(Ok(())) => StatusCode::NO_CONTENT.into_response(),
        Ok(Err(err)) => store_error(err),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
    }
}

/// `POST /apps/{name}/builds` with a `tar.gz` body. With `Accept: application/json` it answers
/// once: 201 when the new release serves, or the reason it does not (the running release keeps
/// serving). Otherwise it streams the build's progress as it happens and ends with one JSON
/// line: `{"status":"released","version":N,...}` or `{"status":"failed","error":"…"}`.
async fn create_build(
    State(api): State<Api>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Response {
    let archive = match axum::body::to_bytes(body, api.max_upload_bytes).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!(
                    "the upload is larger than {} bytes (app.max_upload_bytes)",
                    api.max_upload_bytes
                ),
            );
        }
    };
    let wants_json = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("application/json"));
    let apps = Arc::clone(&api.apps);
    if wants_json {
        let outcome = detached(async move { apps.deploy(&name, archive, &None).await }).await;
        return released(outcome);
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        let progress = Some(tx.clone());
        let outcome = apps.deploy(&name, archive, &progress).await;
        let last = match outcome {
            Ok(release) => released_json(&release),
            Err(err) => json!({ "status": "failed", "error": err.to_string() }),
        };
        let _ = tx.send(last.to_string());
    });
    let lines = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|line| (Ok::<_, std::convert::Infallible>(format!("{line}\n")), rx))
    });
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; charset=utf-8",
        )],
        axum::body::Body::from_stream(lines),
    )
        .into_response()
}

async fn list_releases(State(api): State<Api>, Path(name): Path<String>) -> Response {
    match api.store.releases(&name).await {
        Ok(releases) => Json(releases).into_response(),
        Err(err) => store_error(err),
    }
}

/// What a release that now serves looks like in an answer.
fn released_json(release: &crate::store::Release) -> serde_json::Value {
    json!({ "status": "released", "version": release.version, "build": release.build })
}

/// The answer to a deploy-like request: 201 with the release, or why it did not happen.
fn released(outcome: Result<crate::store::Release, DeployError>) -> Response {
    match outcome {
        Ok(release) => (StatusCode::CREATED, Json(released_json(&release))).into_response(),
        Err(err) => deploy_error(err),
    }
}

fn deploy_error(err: DeployError) -> Response {
    let status = match &err {
        DeployError::Store(StoreError::NotFound(_)) | DeployError::NoBuild(_) => {
            StatusCode::NOT_FOUND
        }
        DeployError::Promote(_) => StatusCode::BAD_GATEWAY,
        DeployError::Store(_) | DeployError::Internal(_) | DeployError::Run(_) => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    };
    (
        status,
        Json(json!({ "status": "failed", "error": err.to_string() })),
    )
        .into_response()
}

async fn get_config(State(api): State<Api>, Path(name): Path<String>) -> Response {
    match api.store.config(&name).await {
        Ok(config) => Json(config).into_response(),
        Err(err) => store_error(err),
    }
}

/// Names a process may be given: `[A-Za-z_][A-Za-z0-9_]*`, but not what app-server sets.
fn valid_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !matches!(name, "PORT" | "QUARTET_ENV")
}

/// `PUT /apps/{name}/config` with a JSON object; `null` removes a key. A running app gets a
/// new release with the new environment.
async fn put_config(
    State(api): State<Api>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let Ok(changes) =
        serde_json::from_slice::<std::collections::BTreeMap<String, Option<String>>>(&body)
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "expected a JSON object of strings (null removes a key)",
        );
    };
    if let Some(bad) = changes.keys().find(|k| !valid_var_name(k)) {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!(
                "{bad:?} is not a usable variable name (PORT and QUARTET_ENV are set by app-server)"
            ),
        );
    }
    let apps = Arc::clone(&api.apps);
    let outcome = detached(async move { apps.update_config(&name, &changes).await }).await;
    match outcome {
        Ok((config, release)) => Json(json!({
            "config": config,
            "release": release.map(|r| r.version),
        }))
        .into_response(),
        Err(err) => deploy_error(err),
    }
}

/// `PUT /builds/{hash}`: a built tree from another app-server (promotion), a `tar.gz` whose
/// SHA-256 is in `x-quartet-build-sha256`. Stored as build `hash`, not built again.
async fn receive_build(
    State(api): State<Api>,
    Path(hash): Path<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Response {
    let Ok(archive) = axum::body::to_bytes(body, api.max_upload_bytes).await else {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "the build is larger than {} bytes (app.max_upload_bytes)",
                api.max_upload_bytes
            ),
        );
    };
    let claimed = headers
        .get(crate::apps::BUILD_DIGEST_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let actual = format!("{:x}", sha2::Sha256::digest(&archive));
    if claimed != actual {
        return error(
            StatusCode::BAD_REQUEST,
            &format!(
                "the body's SHA-256 is {actual}, not what {} says ({claimed:?})",
                crate::apps::BUILD_DIGEST_HEADER
            ),
        );
    }
    let apps = Arc::clone(&api.apps);
    let stored = hash.clone();
    match detached(async move { apps.import_build(&stored, archive).await }).await {
        Ok(true) => (StatusCode::CREATED, Json(json!({ "build": hash }))).into_response(),
        Ok(false) => Json(json!({ "build": hash, "already_here": true })).into_response(),
        Err(err) => deploy_error(err),
    }
}

#[derive(Deserialize)]
struct ReleaseOf {
    build: String,
}

/// `POST /apps/{name}/releases {"build":"<hash>"}`: a new release of a build already here
/// (uploaded earlier or promoted from another server) with this server's config.
async fn release_build(
    State(api): State<Api>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let Ok(of) = serde_json::from_slice::<ReleaseOf>(&body) else {
        return error(StatusCode::BAD_REQUEST, "expected {\"build\": \"<hash>\"}");
    };
    let apps = Arc::clone(&api.apps);
    released(detached(async move { apps.release_build(&name, &of.build).await }).await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PromoteTo {
    /// The other app-server's control API, e.g. `https://prod.example.org:7070`.
    to: String,
    /// Its API token.
    token: String,
    /// The app's name there (default: the same name).
    app: Option<String>,
}

/// `POST /apps/{name}/promote {"to":"https://host:7070","token":"…"}`: the current release's
/// exact build (same hash) goes to the other app-server and is released there with its config.
async fn promote(
    State(api): State<Api>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let target = match serde_json::from_slice::<PromoteTo>(&body) {
        Ok(target) => target,
        Err(err) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "expected {{\"to\":\"https://host:7070\",\"token\":\"…\",\"app\":\"name there (optional)\"}}: {err}"
                ),
            );
        }
    };
    // The token travels to `to`: in the clear only to this machine.
    let loopback_http = ["http://127.0.0.1", "http://localhost", "http://[::1]"]
        .iter()
        .any(|prefix| {
            target.to.strip_prefix(prefix).is_some_and(|rest| {
                rest.is_empty() || rest.starts_with(':') || rest.starts_with('/')
            })
        });
    if !(target.to.starts_with("https://") || loopback_http) {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "\"to\" is the other app-server's API URL: https://, or http:// on this machine only",
        );
    }
    let target_app = target.app.unwrap_or_else(|| name.clone());
    if !valid_app_name(&target_app) {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "not an app name");
    }
    let apps = Arc::clone(&api.apps);
    let to = target.to.clone();
    let outcome = detached(async move {
        apps.promote(&name, &target.to, &target.token, &target_app)
            .await
    })
    .await;
    match outcome {
        Ok(promoted) => (
            StatusCode::CREATED,
            Json(json!({ "status": "promoted", "to": to, "promoted": promoted })),
        )
            .into_response(),
        Err(err) => deploy_error(err),
    }
}

#[derive(Deserialize)]
struct RollbackTo {
    version: i64,
}

/// `POST /apps/{name}/rollback {"version": N}`: a new release with version N's build and config.
async fn rollback(
    State(api): State<Api>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let Ok(target) = serde_json::from_slice::<RollbackTo>(&body) else {
        return error(StatusCode::BAD_REQUEST, "expected {\"version\": N}");
    };
    let apps = Arc::clone(&api.apps);
    let outcome = detached(async move { apps.rollback(&name, target.version).await }).await;
    released(outcome)
}

#[derive(Deserialize)]
struct LogQuery {
    tail: Option<usize>,
    #[serde(default)]
    follow: bool,
}

/// `GET /apps/{name}/logs?tail=N`: the last N lines (default 100, at most 10,000) of the app's
/// log, every process's output with time and process name. With `follow=true`, a stream of
/// server-sent events: those lines, then each new one as it is written.
async fn logs(
    State(api): State<Api>,
    Path(name): Path<String>,
    axum::extract::Query(query): axum::extract::Query<LogQuery>,
) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use tokio::sync::broadcast::error::RecvError;

    if let Err(err) = api.store.get_app(&name).await {
        return store_error(err);
    }
    let tail = query.tail.unwrap_or(100).min(10_000);
    let logs = Arc::clone(&api.apps.runner.logs);
    if !query.follow {
        return (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; charset=utf-8",
            )],
            logs.tail(&name, tail).await,
        )
            .into_response();
    }
    // Subscribe before reading the tail: a line written in between is sent twice at worst,
    // never lost.
    let live = logs.follow(&name);
    let past = logs.tail(&name, tail).await;
    let past: Vec<Event> = past
        .lines()
        .map(|line| Event::default().data(line))
        .collect();
    let stop = api.shutdown.clone();
    let live = futures_util::stream::unfold(live, move |mut live| {
        let stop = stop.clone();
        async move {
            let event = tokio::select! {
                received = live.recv() => match received {
                    Ok(line) => Event::default().data(&*line),
                    Err(RecvError::Lagged(skipped)) => Event::default()
                        .event("skipped")
                        .data(format!("{skipped} lines were written faster than they could be sent")),
                    Err(RecvError::Closed) => return None,
                },
                () = stop.cancelled() => return None,
            };
            Some((event, live))
        }
    });
    let events = futures_util::StreamExt::map(
        futures_util::StreamExt::chain(futures_util::stream::iter(past), live),
        Ok::<_, std::convert::Infallible>,
    );
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}
