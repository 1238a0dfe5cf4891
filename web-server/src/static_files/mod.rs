//! Static files: GET and HEAD with validators, conditional requests, ranges, precompressed
//! sidecars and on-the-fly compression, served from an open-file cache.
//!
//! Entry point: [`StaticFiles::serve`]. A request path goes through [`path::parse`] (nothing
//! may escape the root), then [`cache::FileCache::resolve`] (file, directory, nothing, or a
//! symlink leaving the root), then the representation is chosen (sidecar, compressed or
//! identity), preconditions are evaluated, and the body is sent from memory or streamed from
//! disk in large chunks.

mod cache;
mod conditional;
pub mod encoding;
mod listing;
pub use listing::escape as escape_html;
pub mod path;
pub mod range;

use std::ops::Range;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Body;
use axum::http::header::{
    ACCEPT, ACCEPT_ENCODING, ACCEPT_RANGES, ALLOW, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE,
    CONTENT_TYPE, ETAG, LAST_MODIFIED, LOCATION, RANGE, VARY,
};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, request};
use axum::response::Response;
use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};

pub use cache::CacheLimits;
use cache::{FileCache, FileEntry, Resolved};
use conditional::Precondition;
use encoding::Encoding;
use range::RangeRequest;

/// Characters escaped in a path segment of a `Location` we build.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// Files are streamed from disk in chunks this large (nginx reads 32 KiB by default).
const STREAM_CHUNK: usize = 256 * 1024;

/// What static serving needs to know about a site.
#[derive(Debug, Clone)]
pub struct StaticSite {
    /// Index in the site table, part of the cache key.
    pub id: usize,
    /// Canonical document root.
    pub root: PathBuf,
    pub index: Vec<String>,
    pub listing: bool,
    pub spa_fallback: Option<String>,
    pub allow_symlink_escape: bool,
}

/// Why nothing was served; the caller turns it into an error response (with the site's page).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NotFound,
    Forbidden,
    BadRequest,
}

#[derive(Debug)]
pub struct StaticFiles {
    cache: FileCache,
    compress_min: u64,
    boundary_counter: AtomicU64,
}

impl StaticFiles {
    pub fn new(limits: CacheLimits, compress_min: u64) -> Self {
        Self {
            cache: FileCache::new(limits),
            compress_min,
            boundary_counter: AtomicU64::new(0),
        }
    }

    /// Answers a GET or HEAD for `site`. Other methods get 405.
    pub fn serve(&self, site: &StaticSite, request: &request::Parts) -> Result<Response, Refusal> {
        if request.method != Method::GET && request.method != Method::HEAD {
            let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return Ok(response);
        }
        let site_path = match path::parse(request.uri.path()) {
            Ok(site_path) => site_path,
            Err(path::PathRefusal::Hidden) => return Err(Refusal::NotFound),
            Err(_) => return Err(Refusal::BadRequest),
        };
        let resolved = self.resolve(site, &site_path.relative);
        match resolved {
            Resolved::File(entry) => Ok(self.respond_file(&entry, request)),
            Resolved::Directory(dir) => {
                if !site_path.trailing_slash && !site_path.relative.is_empty() {
                    // /docs → /docs/ so relative links inside the index resolve. Built from
                    // the normalised path: `//docs` must not become a scheme-relative URL.
                    let encoded: String = site_path
                        .relative
                        .split('/')
                        .map(|segment| {
                            percent_encoding::utf8_percent_encode(segment, SEGMENT).to_string()
                        })
                        .collect::<Vec<_>>()
                        .join("/");
                    let mut location = format!("/{encoded}/");
                    if let Some(query) = request.uri.query() {
                        location.push('?');
                        location.push_str(query);
                    }
                    let mut response = plain(StatusCode::MOVED_PERMANENTLY, "");
                    if let Ok(value) = HeaderValue::from_str(&location) {
                        response.headers_mut().insert(LOCATION, value);
                    }
                    return Ok(response);
                }
                for index in &site.index {
                    let candidate = if site_path.relative.is_empty() {
                        index.clone()
                    } else {
                        format!("{}/{index}", site_path.relative)
                    };
                    if let Resolved::File(entry) = self.resolve(site, &candidate) {
                        return Ok(self.respond_file(&entry, request));
                    }
                }
                if site.listing {
                    let json = accepts(&request.headers, "application/json");
                    let mut response = listing::render(
                        &dir,
                        request.uri.path(),
                        json,
                        &site.root,
                        site.allow_symlink_escape,
                    )
                    .ok_or(Refusal::NotFound)?;
                    // HTML or JSON depends on Accept: shared caches must know.
                    response
                        .headers_mut()
                        .insert(VARY, HeaderValue::from_static("Accept"));
                    return Ok(response);
                }
                Err(Refusal::Forbidden)
            }
            Resolved::Escapes => Err(Refusal::Forbidden),
            Resolved::NotFound => {
                if let Some(fallback) = &site.spa_fallback
                    && accepts(&request.headers, "text/html")
                    && let Resolved::File(entry) =
                        self.resolve(site, fallback.trim_start_matches('/'))
                {
                    let mut response = self.respond_file(&entry, request);
                    response
                        .headers_mut()
                        .append(VARY, HeaderValue::from_static("Accept"));
                    return Ok(response);
                }
                Err(Refusal::NotFound)
            }
        }
    }

    /// A file under the site's root by relative path (error pages, fallbacks).
    pub fn file_response(
        &self,
        site: &StaticSite,
        relative: &str,
        status: StatusCode,
        request: &request::Parts,
    ) -> Option<Response> {
        let parsed = path::parse(&format!("/{relative}")).ok()?;
        match self.resolve(site, &parsed.relative) {
            Resolved::File(entry) => {
                let mut response = self.body_response(
                    &entry,
                    request.method == Method::HEAD,
                    None,
                    &request.headers,
                );
                *response.status_mut() = status;
                response.headers_mut().remove(ETAG);
                response.headers_mut().remove(ACCEPT_RANGES);
                Some(response)
            }
            _ => None,
        }
    }

    fn resolve(&self, site: &StaticSite, relative: &str) -> Resolved {
        self.cache
            .resolve(site.id, &site.root, relative, site.allow_symlink_escape)
    }

    fn respond_file(&self, entry: &Arc<FileEntry>, request: &request::Parts) -> Response {
        let headers = &request.headers;
        let head = request.method == Method::HEAD;
        let range_header = headers
            .get(RANGE)
            .and_then(|v| v.to_str().ok())
            .filter(|_| request.method == Method::GET);

        // Choose the representation first: its ETag is what preconditions compare. A range
        // request always gets the identity representation (never compressed ranges).
        let encoding = if range_header.is_some() {
            None
        } else {
            self.choose_encoding(entry, headers)
        };
        let etag = match encoding {
            Some((encoding, _)) => format!(
                "{}-{}\"",
                entry.etag.trim_end_matches('"'),
                encoding.token()
            ),
            None => entry.etag.clone(),
        };
        let varies = entry.compressible || !entry.sidecars.is_empty();

        match conditional::evaluate(headers, &etag, entry.modified) {
            Precondition::NotModified => {
                let mut response = plain(StatusCode::NOT_MODIFIED, "");
                response.headers_mut().remove(CONTENT_TYPE);
                set_validators(response.headers_mut(), &etag, entry, varies);
                return response;
            }
            Precondition::Failed => {
                return plain(StatusCode::PRECONDITION_FAILED, "precondition failed\n");
            }
            Precondition::Proceed => {}
        }

        if let Some(range_text) = range_header
            && conditional::if_range_allows(headers, &etag, entry.modified)
        {
            match range::parse(range_text, entry.len) {
                RangeRequest::Full => {}
                RangeRequest::Unsatisfiable => {
                    let mut response =
                        plain(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable\n");
                    if let Ok(value) = HeaderValue::from_str(&format!("bytes */{}", entry.len)) {
                        response.headers_mut().insert(CONTENT_RANGE, value);
                    }
                    set_validators(response.headers_mut(), &etag, entry, varies);
                    return response;
                }
                RangeRequest::Partial(ranges) => {
                    let mut response = self.partial_response(entry, ranges, head);
                    set_validators(response.headers_mut(), &etag, entry, varies);
                    return response;
                }
            }
        }

        let mut response = self.body_response(entry, head, encoding, headers);
        set_validators(response.headers_mut(), &etag, entry, varies);
        response
    }

    /// The best coding both sides accept: a sidecar file first, else compression on the fly
    /// for compressible files at least `compress_min` large.
    fn choose_encoding(
        &self,
        entry: &FileEntry,
        headers: &HeaderMap,
    ) -> Option<(Encoding, Source)> {
        if !entry.compressible && entry.sidecars.is_empty() {
            return None;
        }
        let acceptable =
            encoding::acceptable(headers.get(ACCEPT_ENCODING).and_then(|v| v.to_str().ok()));
        for encoding in acceptable {
            if let Some(sidecar) = entry.sidecars.iter().find(|s| s.encoding == encoding) {
                let source = match &sidecar.body {
                    Some(bytes) => Source::Memory(bytes.clone()),
                    None => Source::File(sidecar.path.clone(), sidecar.len),
                };
                return Some((encoding, source));
            }
            if entry.compressible
                && entry.len >= self.compress_min
                && let Some(bytes) = entry.compressed(encoding)
            {
                return Some((encoding, Source::Memory(bytes)));
            }
        }
        None
    }

    /// 200 with the chosen representation.
    fn body_response(
        &self,
        entry: &FileEntry,
        head: bool,
        encoding: Option<(Encoding, Source)>,
        _headers: &HeaderMap,
    ) -> Response {
        let (source, coding) = match encoding {
            Some((encoding, source)) => (source, Some(encoding)),
            None => (entry_source(entry), None),
        };
        let len = source.len();
        let body = if head {
            Body::empty()
        } else {
            source.body(0..len)
        };
        let mut response = Response::new(body);
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, entry.content_type.clone());
        headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
        if let Some(coding) = coding {
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static(coding.token()));
        }
        response
    }

    /// 206 with one range, or `multipart/byteranges` with several.
    fn partial_response(&self, entry: &FileEntry, ranges: Vec<Range<u64>>, head: bool) -> Response {
        let source = entry_source(entry);
        if let [range] = ranges.as_slice() {
            let len = range.end - range.start;
            let body = if head {
                Body::empty()
            } else {
                source.body(range.clone())
            };
            let mut response = Response::new(body);
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, entry.content_type.clone());
            headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
            if let Ok(value) = HeaderValue::from_str(&format!(
                "bytes {}-{}/{}",
                range.start,
                range.end - 1,
                entry.len
            )) {
                headers.insert(CONTENT_RANGE, value);
            }
            return response;
        }

        let boundary = format!(
            "quartet{:016x}{:08x}",
            entry.len
                ^ (entry
                    .modified
                    .elapsed()
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0)),
            self.boundary_counter.fetch_add(1, Ordering::Relaxed)
        );
        let content_type = entry
            .content_type
            .to_str()
            .unwrap_or("application/octet-stream");
        let mut parts: Vec<Part> = Vec::new();
        for range in &ranges {
            parts.push(Part::Bytes(Bytes::from(format!(
                "\r\n--{boundary}\r\nContent-Type: {content_type}\r\nContent-Range: bytes {}-{}/{}\r\n\r\n",
                range.start,
                range.end - 1,
                entry.len
            ))));
            parts.push(Part::Range(range.clone()));
        }
        parts.push(Part::Bytes(Bytes::from(format!("\r\n--{boundary}--\r\n"))));
        let len: u64 = parts
            .iter()
            .map(|p| match p {
                Part::Bytes(b) => b.len() as u64,
                Part::Range(r) => r.end - r.start,
            })
            .sum();
        let body = if head {
            Body::empty()
        } else {
            multipart_body(source, parts)
        };
        let mut response = Response::new(body);
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        let headers = response.headers_mut();
        if let Ok(value) =
            HeaderValue::from_str(&format!("multipart/byteranges; boundary={boundary}"))
        {
            headers.insert(CONTENT_TYPE, value);
        }
        headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
        response
    }
}

/// Where a representation's bytes are.
#[derive(Debug, Clone)]
enum Source {
    Memory(Bytes),
    /// An open file from the cache.
    Open(Arc<std::fs::File>, u64),
    /// A file to open for this response (when too many are open already).
    File(PathBuf, u64),
}

impl Source {
    fn len(&self) -> u64 {
        match self {
            Source::Memory(bytes) => bytes.len() as u64,
            Source::Open(_, len) | Source::File(_, len) => *len,
        }
    }

    fn body(&self, range: Range<u64>) -> Body {
        match self {
            Source::Memory(bytes) => {
                Body::from(bytes.slice(range.start as usize..range.end as usize))
            }
            Source::Open(file, _) => Body::from_stream(open_file_stream(Arc::clone(file), range)),
            Source::File(path, _) => Body::from_stream(file_range_stream(path.clone(), range)),
        }
    }
}

/// The bytes of an entry's identity representation: memory, the cached open file, or a path.
fn entry_source(entry: &FileEntry) -> Source {
    match (&entry.body, &entry.open) {
        (Some(bytes), _) => Source::Memory(bytes.clone()),
        (None, Some(file)) => Source::Open(Arc::clone(file), entry.len),
        (None, None) => Source::File(entry.path.clone(), entry.len),
    }
}

enum Part {
    Bytes(Bytes),
    Range(Range<u64>),
}

type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

fn multipart_body(source: Source, parts: Vec<Part>) -> Body {
    match source {
        Source::Memory(bytes) => {
            let mut out = Vec::new();
            for part in parts {
                match part {
                    Part::Bytes(b) => out.extend_from_slice(&b),
                    Part::Range(r) => {
                        out.extend_from_slice(&bytes[r.start as usize..r.end as usize])
                    }
                }
            }
            Body::from(out)
        }
        source => {
            let pieces = parts.into_iter().map(move |part| -> ByteStream {
                match (part, &source) {
                    (Part::Bytes(b), _) => {
                        Box::pin(futures_util::stream::once(async move { Ok(b) }))
                    }
                    (Part::Range(r), Source::Open(file, _)) => {
                        open_file_stream(Arc::clone(file), r)
                    }
                    (Part::Range(r), Source::File(path, _)) => file_range_stream(path.clone(), r),
                    (Part::Range(r), Source::Memory(bytes)) => {
                        let slice = bytes.slice(r.start as usize..r.end as usize);
                        Box::pin(futures_util::stream::once(async move { Ok(slice) }))
                    }
                }
            });
            Body::from_stream(futures_util::stream::iter(pieces).flatten())
        }
    }
}

/// Streams a byte range of an already open file with positional reads of [`STREAM_CHUNK`],
/// each a short job on the blocking pool.
fn open_file_stream(file: Arc<std::fs::File>, range: Range<u64>) -> ByteStream {
    let state = (file, range.start, range.end);
    Box::pin(futures_util::stream::unfold(
        state,
        |(file, offset, end)| async move {
            if offset >= end {
                return None;
            }
            let want = ((end - offset) as usize).min(STREAM_CHUNK);
            let reader = Arc::clone(&file);
            let read = tokio::task::spawn_blocking(move || {
                use std::os::unix::fs::FileExt;
                let mut buf = vec![0u8; want];
                let n = reader.read_at(&mut buf, offset)?;
                buf.truncate(n);
                Ok::<_, std::io::Error>(buf)
            })
            .await;
            match read {
                Ok(Ok(buf)) if !buf.is_empty() => {
                    let next = offset + buf.len() as u64;
                    Some((Ok(Bytes::from(buf)), (file, next, end)))
                }
                // The file shrank under us: end the body short rather than pad it.
                Ok(Ok(_)) => Some((
                    Err(std::io::ErrorKind::UnexpectedEof.into()),
                    (file, end, end),
                )),
                Ok(Err(err)) => Some((Err(err), (file, end, end))),
                Err(join) => Some((Err(std::io::Error::other(join)), (file, end, end))),
            }
        },
    ))
}

/// Streams a byte range of a file in [`STREAM_CHUNK`] reads. Each read is a short job on
/// tokio's blocking pool, so a slow client holds no thread while it is not reading.
fn file_range_stream(path: PathBuf, range: Range<u64>) -> ByteStream {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let opened = async move {
        let mut file = tokio::fs::File::open(&path).await?;
        file.seek(std::io::SeekFrom::Start(range.start)).await?;
        Ok::<_, std::io::Error>(tokio_util::io::ReaderStream::with_capacity(
            file.take(range.end - range.start),
            STREAM_CHUNK,
        ))
    };
    Box::pin(futures_util::stream::once(opened).try_flatten())
}

fn set_validators(headers: &mut HeaderMap, etag: &str, entry: &FileEntry, varies: bool) {
    if let Ok(value) = HeaderValue::from_str(etag) {
        headers.insert(ETAG, value);
    }
    headers.insert(LAST_MODIFIED, entry.last_modified.clone());
    headers.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if varies {
        headers.insert(VARY, HeaderValue::from_static("Accept-Encoding"));
    }
}

/// Whether `Accept` names `media_type` (or `*/*` for HTML navigation fallbacks).
fn accepts(headers: &HeaderMap, media_type: &str) -> bool {
    headers
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| {
            accept.split(',').any(|item| {
                let item = item.split(';').next().unwrap_or("").trim();
                item.eq_ignore_ascii_case(media_type)
            })
        })
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    let mut response = Response::new(Body::from(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
