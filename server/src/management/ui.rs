//! The management web UI: a single-page app of plain HTML, CSS and JavaScript modules
//! (`ui/`), embedded in the binary at build time and served at `/` beside the API it
//! calls. Nothing is fetched from elsewhere at run time, and no build step other than
//! `cargo build` makes it.
//!
//! Each file is answered with its content type, a strong `ETag` (a hash of its bytes,
//! computed at compile time) and `Cache-Control: no-cache`: a browser revalidates on
//! every load and gets `304 Not Modified` until the binary serves other bytes. A
//! content security policy keeps the page to its own scripts, styles and API.

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::Api;

/// One embedded file: the path it is served at, its content type, its bytes and their
/// entity tag.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
    etag: &'static str,
}

/// An [`Asset`] from a file of `ui/`, its tag computed at compile time.
macro_rules! asset {
    ($path:literal, $file:literal, $type:expr) => {
        Asset {
            path: $path,
            content_type: $type,
            body: include_bytes!(concat!("ui/", $file)),
            etag: {
                const TAG: [u8; 18] = etag(include_bytes!(concat!("ui/", $file)));
                match std::str::from_utf8(&TAG) {
                    Ok(tag) => tag,
                    Err(_) => panic!("an entity tag is ASCII"),
                }
            },
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file of the UI. `/` is the page; the modules and style sheet sit beside it.
static ASSETS: &[Asset] = &[
    asset!("/", "index.html", "text/html; charset=utf-8"),
    asset!("/index.html", "index.html", "text/html; charset=utf-8"),
    asset!("/style.css", "style.css", "text/css; charset=utf-8"),
    asset!("/icon.svg", "icon.svg", "image/svg+xml"),
    asset!("/app.js", "app.js", JS),
    asset!("/api.js", "api.js", JS),
    asset!("/dom.js", "dom.js", JS),
    asset!("/charts.js", "charts.js", JS),
    asset!("/views.js", "views.js", JS),
];

/// What the page may load and call: itself only, with no inline script or style (names
/// the broker shows are text, never markup).
const CSP: &str = "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// `"` + 16 hex digits of the FNV-1a hash of `bytes` + `"`: a strong entity tag.
const fn etag(bytes: &[u8]) -> [u8; 18] {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    let digits = b"0123456789abcdef";
    let mut tag = [b'"'; 18];
    let mut d = 0;
    while d < 16 {
        tag[1 + d] = digits[((hash >> (60 - 4 * d)) & 0xf) as usize];
        d += 1;
    }
    tag
}

/// The UI's routes: each embedded file at its path (`/` being `index.html`). Paths
/// that are neither the UI's nor the API's fall through to the API's JSON 404.
pub(super) fn routes() -> Router<Api> {
    ASSETS.iter().fold(Router::new(), |router, asset| {
        router.route(
            asset.path,
            get(move |headers: HeaderMap| async move { serve(asset, &headers) }),
        )
    })
}

/// `asset`, or 304 when the request's `If-None-Match` names its current tag.
fn serve(asset: &'static Asset, request: &HeaderMap) -> Response {
    let unchanged = request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| tag.trim() == asset.etag || tag.trim() == "*");
    let mut response = if unchanged {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            )],
            asset.body,
        )
            .into_response()
    };
    let headers = response.headers_mut();
    headers.insert(header::ETAG, HeaderValue::from_static(asset.etag));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_quoted_hex_and_differ_by_content() {
        let a = etag(b"a");
        let b = etag(b"b");
        assert_ne!(a, b);
        assert_eq!((a[0], a[17]), (b'"', b'"'));
        assert!(a[1..17].iter().all(u8::is_ascii_hexdigit));
        // FNV-1a of the empty input is its offset basis.
        assert_eq!(&etag(b""), b"\"cbf29ce484222325\"");
    }

    #[test]
    fn every_asset_is_served_with_its_type_and_tag() {
        for asset in ASSETS {
            let response = serve(asset, &HeaderMap::new());
            assert_eq!(response.status(), StatusCode::OK, "{}", asset.path);
            assert_eq!(response.headers()[header::CONTENT_TYPE], asset.content_type);
            let mut request = HeaderMap::new();
            request.insert(header::IF_NONE_MATCH, HeaderValue::from_static(asset.etag));
            assert_eq!(
                serve(asset, &request).status(),
                StatusCode::NOT_MODIFIED,
                "{}",
                asset.path
            );
        }
    }
}
