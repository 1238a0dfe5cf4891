//! Turning a request target into a path under a site's root, refusing everything that could
//! step outside it: `..` in any encoding (`%2e%2e`, double-encoded `%252e%252e`, `..%5c`),
//! backslashes, NUL, and hidden files (any segment starting with a dot, except `.well-known`).

use percent_encoding::percent_decode_str;

/// Why a request path is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathRefusal {
    /// Not valid percent-encoding of UTF-8, or a character no file name here may hold.
    BadEncoding,
    /// A `..` segment, in any encoding.
    Traversal,
    /// A dot-file or dot-directory.
    Hidden,
}

/// A request path, decoded once and normalised: segments without `.` or empty ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SitePath {
    /// `a/b/c.html` — relative, `/`-separated, never containing `..`.
    pub relative: String,
    /// Whether the request path ended in `/` (directories are redirected to the slash form).
    pub trailing_slash: bool,
}

/// Decodes and checks the path part of a request target (without the query).
pub fn parse(raw_path: &str) -> Result<SitePath, PathRefusal> {
    parse_with(raw_path, false)
}

/// The decoded, normalised form of a request path, for matching rules (auth, proxy routes,
/// header globs): `//admin/./x` and `/%61dmin/x` are both `/admin/x`, so no spelling of a path
/// slips past a rule written for it. Hidden segments are allowed here (a proxied app may use
/// them); traversal and bad encoding are refused as in [`parse`].
pub fn normalize(raw_path: &str) -> Result<String, PathRefusal> {
    let parsed = parse_with(raw_path, true)?;
    let mut out = String::with_capacity(parsed.relative.len() + 2);
    out.push('/');
    out.push_str(&parsed.relative);
    if parsed.trailing_slash {
        out.push('/');
    }
    Ok(out)
}

fn parse_with(raw_path: &str, allow_hidden: bool) -> Result<SitePath, PathRefusal> {
    if !raw_path.starts_with('/') {
        return Err(PathRefusal::BadEncoding);
    }
    let decoded = percent_decode_str(raw_path)
        .decode_utf8()
        .map_err(|_| PathRefusal::BadEncoding)?;
    if decoded.contains(['\0', '\\']) {
        return Err(PathRefusal::Traversal);
    }
    // After one round of decoding, no escape for `.`, `/`, `\` or NUL may remain: that is what
    // a double-encoded `%252e%252e%252f` relies on, should anything downstream decode twice.
    let lower = decoded.to_ascii_lowercase();
    if ["%2e", "%2f", "%5c", "%00"]
        .iter()
        .any(|escape| lower.contains(escape))
    {
        return Err(PathRefusal::Traversal);
    }
    let mut segments = Vec::new();
    for (index, segment) in decoded.split('/').enumerate() {
        match segment {
            "" | "." => continue,
            ".." => return Err(PathRefusal::Traversal),
            hidden if hidden.starts_with('.') && !allow_hidden => {
                // ACME's http-01 challenge and other well-known URIs live under /.well-known/.
                if !(index == 1 && hidden == ".well-known") {
                    return Err(PathRefusal::Hidden);
                }
                segments.push(segment);
            }
            _ => segments.push(segment),
        }
    }
    Ok(SitePath {
        relative: segments.join("/"),
        trailing_slash: decoded.ends_with('/') && !segments.is_empty(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_paths_are_normalised() {
        assert_eq!(
            parse("/a//b/./c.html").unwrap(),
            SitePath {
                relative: "a/b/c.html".into(),
                trailing_slash: false
            }
        );
        assert_eq!(parse("/").unwrap().relative, "");
        assert!(parse("/docs/").unwrap().trailing_slash);
        assert_eq!(parse("/caf%C3%A9.txt").unwrap().relative, "café.txt");
        assert_eq!(parse("/100%25.txt").unwrap().relative, "100%.txt");
        assert!(parse("/.well-known/acme-challenge/x").is_ok());
    }

    #[test]
    fn every_encoding_of_traversal_is_refused() {
        for probe in [
            "/../etc/passwd",
            "/a/../../etc/passwd",
            "/%2e%2e/etc/passwd",
            "/%2E%2E/etc/passwd",
            "/..%2fetc/passwd",
            "/%252e%252e/etc/passwd",
            "/%252e%252e%252fetc/passwd",
            "/..%5cetc/passwd",
            "/..\\etc/passwd",
            "/a%00.html",
            "/%255c..%255c",
        ] {
            let refused = parse(probe);
            assert!(
                matches!(
                    refused,
                    Err(PathRefusal::Traversal) | Err(PathRefusal::Hidden)
                ),
                "{probe} gave {refused:?}"
            );
        }
    }

    #[test]
    fn normalised_paths_for_rule_matching() {
        assert_eq!(normalize("//admin/./x").unwrap(), "/admin/x");
        assert_eq!(normalize("/%61dmin/x").unwrap(), "/admin/x");
        assert_eq!(normalize("/admin/").unwrap(), "/admin/");
        assert_eq!(normalize("/").unwrap(), "/");
        assert_eq!(normalize("/app/.config").unwrap(), "/app/.config");
        assert!(normalize("/a/../admin").is_err());
    }

    #[test]
    fn hidden_files_and_bad_encoding_are_refused() {
        assert_eq!(parse("/.env"), Err(PathRefusal::Hidden));
        assert_eq!(parse("/a/.git/config"), Err(PathRefusal::Hidden));
        assert_eq!(parse("/a/.well-known/x"), Err(PathRefusal::Hidden));
        assert_eq!(parse("/%ff"), Err(PathRefusal::BadEncoding));
        assert_eq!(parse("relative"), Err(PathRefusal::BadEncoding));
    }
}
