//! Content codings: choosing one from `Accept-Encoding`, and compressing.

use std::io::Write;

/// The codings we serve, in our order of preference at equal quality.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    Brotli,
    Zstd,
    Gzip,
}

impl Encoding {
    pub fn token(self) -> &'static str {
        match self {
            Encoding::Brotli => "br",
            Encoding::Zstd => "zstd",
            Encoding::Gzip => "gzip",
        }
    }

    pub fn sidecar_extension(self) -> &'static str {
        match self {
            Encoding::Brotli => ".br",
            Encoding::Zstd => ".zst",
            Encoding::Gzip => ".gz",
        }
    }
}

/// The codings the client accepts (quality > 0), best first: by quality, then by our
/// preference (br, zstd, gzip). `identity` is always acceptable to us as a fallback.
pub fn acceptable(accept_encoding: Option<&str>) -> Vec<Encoding> {
    let Some(header) = accept_encoding else {
        return Vec::new();
    };
    let mut star = None;
    // Each coding once; when a client lists one twice, the last mention wins.
    let mut listed: Vec<(Encoding, f32)> = Vec::new();
    for item in header.split(',') {
        let mut parts = item.split(';');
        let token = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let quality = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .filter(|q| q.is_finite())
            .unwrap_or(1.0);
        let encoding = match token.as_str() {
            "br" => Encoding::Brotli,
            "zstd" => Encoding::Zstd,
            "gzip" | "x-gzip" => Encoding::Gzip,
            "*" => {
                star = Some(quality);
                continue;
            }
            _ => continue,
        };
        match listed.iter_mut().find(|(e, _)| *e == encoding) {
            Some(entry) => entry.1 = quality,
            None => listed.push((encoding, quality)),
        }
    }
    if let Some(quality) = star {
        for encoding in [Encoding::Brotli, Encoding::Zstd, Encoding::Gzip] {
            if !listed.iter().any(|(e, _)| *e == encoding) {
                listed.push((encoding, quality));
            }
        }
    }
    let mut explicit: Vec<(Encoding, f32)> = listed.into_iter().filter(|(_, q)| *q > 0.0).collect();
    let rank = |e: Encoding| match e {
        Encoding::Brotli => 0,
        Encoding::Zstd => 1,
        Encoding::Gzip => 2,
    };
    explicit.sort_by(|a, b| b.1.total_cmp(&a.1).then(rank(a.0).cmp(&rank(b.0))));
    explicit.into_iter().map(|(e, _)| e).collect()
}

/// Compresses `data` with `encoding` at a level that suits serving (fast enough, small).
pub fn compress(encoding: Encoding, data: &[u8]) -> Vec<u8> {
    match encoding {
        Encoding::Gzip => {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
            let _ = encoder.write_all(data);
            encoder.finish().unwrap_or_default()
        }
        Encoding::Brotli => {
            let mut out = Vec::new();
            {
                let mut writer = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
                let _ = writer.write_all(data);
            }
            out
        }
        Encoding::Zstd => zstd::bulk::compress(data, 3).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quality_then_preference() {
        assert_eq!(
            acceptable(Some("gzip, deflate, br, zstd")),
            vec![Encoding::Brotli, Encoding::Zstd, Encoding::Gzip]
        );
        assert_eq!(
            acceptable(Some("gzip;q=1.0, br;q=0.5")),
            vec![Encoding::Gzip, Encoding::Brotli]
        );
        assert_eq!(
            acceptable(Some("br;q=0, *")),
            vec![Encoding::Zstd, Encoding::Gzip]
        );
        assert!(acceptable(Some("identity")).is_empty());
        assert!(acceptable(None).is_empty());
        assert_eq!(
            acceptable(Some("gzip, gzip;q=0.5, br;q=0.1")),
            vec![Encoding::Gzip, Encoding::Brotli]
        );
        assert_eq!(acceptable(Some("gzip, gzip;q=0")), vec![]);
    }

    #[test]
    fn compressed_data_round_trips() {
        let data = "hello world ".repeat(200);
        let gz = compress(Encoding::Gzip, data.as_bytes());
        let mut out = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gz[..]), &mut out)
            .unwrap();
        assert_eq!(out, data);
        let zs = compress(Encoding::Zstd, data.as_bytes());
        assert_eq!(zstd::decode_all(&zs[..]).unwrap(), data.as_bytes());
        let br = compress(Encoding::Brotli, data.as_bytes());
        let mut plain = Vec::new();
        brotli::BrotliDecompress(&mut &br[..], &mut plain).unwrap();
        assert_eq!(plain, data.as_bytes());
    }
}
