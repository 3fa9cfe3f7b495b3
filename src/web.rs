//! The built-in web client at `GET /`: a few static files compiled into the binary, so a
//! fresh `chat-server --data ./db` can be used from a browser with nothing else to
//! install. The client itself (plain HTML, CSS and JavaScript modules in `web/`) speaks
//! the plain dialect; this module only serves it, with a strict Content-Security-Policy:
//! scripts, styles and connections from this origin only, nothing inline, no framing.

use warp::http::header::{
    HeaderValue, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY,
    X_CONTENT_TYPE_OPTIONS,
};
use warp::path::FullPath;
use warp::reply::Response;
use warp::{Filter, Rejection};

/// `'self'` in `connect-src` covers `ws://` and `wss://` to the same host (CSP level 3).
pub const CONTENT_SECURITY_POLICY_VALUE: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// One embedded file.
pub struct Asset {
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static str,
}

const JS: &str = "text/javascript; charset=utf-8";

/// A file of `web/`, served under `/web/` with the same name.
macro_rules! web_file {
    ($name:literal, $content_type:expr) => {
        Asset {
            path: concat!("/web/", $name),
            content_type: $content_type,
            body: include_str!(concat!("../web/", $name)),
        }
    };
}

const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_str!("../web/index.html"),
    },
    web_file!("style.css", "text/css; charset=utf-8"),
    web_file!("app.js", JS),
    web_file!("protocol.js", JS),
    web_file!("socket.js", JS),
    web_file!("state.js", JS),
    web_file!("view.js", JS),
    web_file!("icon.svg", "image/svg+xml"),
];

/// The embedded file served at `path`, if any.
pub fn asset(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|asset| asset.path == path)
}

fn response(asset: &Asset) -> Response {
    let mut response = Response::new(asset.body.into());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    headers.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY_VALUE),
    );
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // Small files: always revalidate, so an upgraded server never runs a stale client.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// `GET` (or `HEAD`) of an embedded file; any other path is rejected (and ends as the
/// JSON 404).
pub fn routes() -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + Send + Sync {
    warp::get()
        .or(warp::head())
        .unify()
        .and(warp::path::full())
        .and_then(|path: FullPath| async move {
            asset(path.as_str())
                .map(response)
                .ok_or_else(warp::reject::not_found)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_has_its_content_type_and_unknown_paths_have_none() {
        assert!(asset("/").unwrap().body.contains("/web/app.js"));
        assert!(asset("/web/app.js")
            .unwrap()
            .content_type
            .starts_with("text/javascript"));
        assert!(asset("/web/style.css")
            .unwrap()
            .content_type
            .starts_with("text/css"));
        assert_eq!(
            asset("/web/icon.svg").unwrap().content_type,
            "image/svg+xml"
        );
        assert!(asset("/web/nope.js").is_none());
        assert!(asset("/index.html").is_none());
    }

    #[test]
    fn every_module_the_page_imports_is_served() {
        for asset in ASSETS.iter().filter(|a| a.content_type == JS) {
            for line in asset.body.lines().filter(|l| l.starts_with("import ")) {
                let module = line.rsplit("'./").next().unwrap().trim_end_matches("';");
                let path = format!("/web/{module}");
                assert!(
                    super::asset(&path).is_some(),
                    "{} imports {path}",
                    asset.path
                );
            }
        }
    }

    #[test]
    fn the_client_never_writes_html_from_strings() {
        for asset in ASSETS.iter().filter(|a| a.content_type == JS) {
            for sink in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
            ] {
                assert!(!asset.body.contains(sink), "{} uses {sink}", asset.path);
            }
        }
    }
}
