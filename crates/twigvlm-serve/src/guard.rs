//! Who may drive the server. Any web page a user visits can send requests to a server on their
//! machine; the checks here make sure such a page cannot:
//! - a body must be declared `application/json` (415 otherwise), which a page on another origin
//!   can only send after a CORS preflight this server does not answer (unless asked to);
//! - bound to a loopback address, the `Host` must be a loopback name (or one allowed with
//!   `--allowed-host`), which defeats DNS rebinding, and a browser's `Origin` must be the
//!   server's own (or one allowed with `--allowed-origin`).
//!
//! A server bound to a public address for many users keeps the first rule only: who can reach it
//! is the network's decision, and browsers on other origins still cannot post JSON to it without
//! the CORS answers `--allowed-origin` turns on.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::metrics::Outcome;
use crate::AppState;

/// Hosts and browser origins allowed besides loopback ones and the server's own.
#[derive(Debug, Clone, Default)]
pub struct AccessPolicy {
    /// Host names (without port) a loopback-bound server answers besides loopback names.
    pub allowed_hosts: Vec<String>,
    /// Browser origins (`https://app.example`) allowed to call the server; they get CORS answers.
    pub allowed_origins: Vec<String>,
}

/// Refuses a request the access rules refuse, before any handler sees it.
pub(crate) async fn guard(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    match check(&state, request.method(), request.headers()) {
        Ok(()) => next.run(request).await,
        Err(error) => {
            state.metrics.count(Outcome::Rejected);
            tracing::info!(
                status = error.status.as_u16(),
                outcome = %Outcome::Rejected.label(),
                error = %error.message,
                "request"
            );
            error.into_response()
        }
    }
}

fn check(state: &AppState, method: &Method, headers: &HeaderMap) -> Result<(), ApiError> {
    let policy = &state.access;
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
    if state.loopback_only {
        let name = host_name(host);
        if !is_loopback_name(name) && !policy.allowed_hosts.iter().any(|allowed| allowed.eq_ignore_ascii_case(name)) {
            return Err(forbidden(
                format!("this server answers loopback host names only, not {host:?} (add one with --allowed-host)"),
                "forbidden_host",
            ));
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or_default();
            let own = [format!("http://{host}"), format!("https://{host}")];
            if !own.iter().any(|o| o == origin) && !policy.allowed_origins.iter().any(|allowed| allowed == origin) {
                return Err(forbidden(
                    format!("requests from the web origin {origin:?} are not allowed (add one with --allowed-origin)"),
                    "forbidden_origin",
                ));
            }
        }
    }
    if method == Method::POST && !is_json(headers) {
        return Err(ApiError::invalid_request("the body must be sent as Content-Type: application/json", None)
            .with_status(StatusCode::UNSUPPORTED_MEDIA_TYPE)
            .with_code("unsupported_media_type"));
    }
    Ok(())
}

fn forbidden(message: String, code: &'static str) -> ApiError {
    ApiError::invalid_request(message, None).with_status(StatusCode::FORBIDDEN).with_code(code)
}

/// `application/json`, with or without parameters (`; charset=utf-8`).
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else { return false };
    value.split(';').next().is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

/// The name of a `Host` header without its port (`[::1]:8080` → `::1`).
fn host_name(host: &str) -> &str {
    if let Some(bracketed) = host.strip_prefix('[') {
        return bracketed.split(']').next().unwrap_or_default();
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

/// `localhost`, a name under `.localhost` (RFC 6761: always loopback) or a loopback address.
fn is_loopback_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower == "localhost" || lower.ends_with(".localhost") || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_lose_their_port() {
        assert_eq!(host_name("127.0.0.1:8080"), "127.0.0.1");
        assert_eq!(host_name("[::1]:8080"), "::1");
        assert_eq!(host_name("localhost"), "localhost");
    }

    #[test]
    fn loopback_names_are_recognised() {
        for name in ["localhost", "LOCALHOST", "app.localhost", "127.0.0.1", "127.8.9.10", "::1"] {
            assert!(is_loopback_name(name), "{name}");
        }
        for name in ["evil.example", "10.0.0.1", "localhost.evil.example", "", "0.0.0.0"] {
            assert!(!is_loopback_name(name), "{name}");
        }
    }

    #[test]
    fn json_bodies_are_recognised_with_parameters() {
        let headers = |value: &str| HeaderMap::from_iter([(header::CONTENT_TYPE, value.parse().unwrap())]);
        assert!(is_json(&headers("application/json")));
        assert!(is_json(&headers("Application/JSON; charset=utf-8")));
        assert!(!is_json(&headers("text/plain")));
        assert!(!is_json(&HeaderMap::new()));
    }
}
