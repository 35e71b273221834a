//! The web console: its static files (plain HTML, CSS and ES modules from
//! `collector/web/`, embedded in the binary — nothing is fetched from
//! anywhere else), the login page, login and logout. The pages read only
//! the documented JSON API; this module never touches the store beyond the
//! user table.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tracing::{info, warn};

use crate::api::ApiState;
use crate::auth::sessions::{self, Principal, Sessions};
use crate::auth::users::{Role, UserStore};
use crate::clock::now_ms;

/// The console's users and sessions.
pub struct Console {
    pub users: Arc<UserStore>,
    pub sessions: Sessions,
    /// Failed logins per user name and client address.
    pub throttle: crate::auth::throttle::Throttle,
    /// No admin password configured: no login; every visitor is an admin
    /// (meant for a loopback listener).
    pub open: bool,
}

impl Console {
    pub fn new(users: Arc<UserStore>, open: bool) -> Self {
        Console {
            users,
            sessions: Sessions::default(),
            throttle: Default::default(),
            open,
        }
    }

    /// The logged-in principal behind a request, from its session cookie.
    pub fn principal(&self, headers: &HeaderMap) -> Option<Principal> {
        let cookies = headers.get_all(header::COOKIE);
        cookies
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(sessions::token_from_cookie)
            .find_map(|t| self.sessions.get(t, now_ms()))
    }
}

/// One embedded file.
struct Asset {
    name: &'static str,
    mime: &'static str,
    body: &'static str,
}

macro_rules! assets {
    ($($name:literal => $mime:literal),* $(,)?) => {
        &[$(Asset { name: $name, mime: $mime, body: include_str!(concat!("../../web/", $name)) }),*]
    };
}

static ASSETS: &[Asset] = assets! {
    "app.css" => "text/css; charset=utf-8",
    "app.js" => "text/javascript; charset=utf-8",
    "lib.js" => "text/javascript; charset=utf-8",
    "chart.js" => "text/javascript; charset=utf-8",
    "dashboard.js" => "text/javascript; charset=utf-8",
    "xview.js" => "text/javascript; charset=utf-8",
    "profile.js" => "text/javascript; charset=utf-8",
    "status.js" => "text/javascript; charset=utf-8",
    "report.js" => "text/javascript; charset=utf-8",
    "servers.js" => "text/javascript; charset=utf-8",
    "users.js" => "text/javascript; charset=utf-8",
    "alerts.js" => "text/javascript; charset=utf-8",
    "login.js" => "text/javascript; charset=utf-8",
};
const INDEX_HTML: &str = include_str!("../../web/index.html");
const LOGIN_HTML: &str = include_str!("../../web/login.html");

/// Scripts, styles and data only from the collector itself; no inline
/// script, no framing. Captured text is inserted as text by the pages;
/// this is the second line of defence.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; \
                   form-action 'self'";

fn page(body: &'static str) -> Response {
    let mut r = ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    r
}

/// The console routes, merged into the HTTP application.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/", get(index))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/assets/:name", get(asset))
}

async fn index(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    let console = &state.console;
    if console.principal(&headers).is_some() {
        return page(INDEX_HTML);
    }
    if console.open {
        // Open console: every visitor gets an admin session, so the
        // pages' API calls pass even when API tokens are required.
        let token = console.sessions.create(
            Principal {
                user: "anonymous".into(),
                role: Role::Admin,
            },
            now_ms(),
        );
        let mut r = page(INDEX_HTML);
        if let Ok(v) = HeaderValue::from_str(&sessions::set_cookie(&token)) {
            r.headers_mut().insert(header::SET_COOKIE, v);
        }
        return r;
    }
    Redirect::to("/login").into_response()
}

async fn login_page() -> Response {
    page(LOGIN_HTML)
}

async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.name == name) {
        Some(a) => (
            [
                (header::CONTENT_TYPE, a.mime),
                (header::CACHE_CONTROL, "no-cache"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            a.body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such file").into_response(),
    }
}

#[derive(Deserialize)]
pub struct LoginForm {
    user: String,
    password: String,
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// `POST /login` with JSON `{"user","password"}`: sets the session cookie.
async fn login(
    State(state): State<ApiState>,
    peer: Option<ConnectInfo<SocketAddr>>,
    Json(form): Json<LoginForm>,
) -> Response {
    let peer_ip = peer.map(|c| c.0.ip().to_string()).unwrap_or_default();
    let peer = peer.map(|c| c.0.to_string()).unwrap_or_default();
    let throttle = &state.console.throttle;
    if let Some(wait) = throttle.wait_ms(&form.user, &peer_ip, now_ms()) {
        warn!(user = %form.user, %peer, wait_ms = wait, "console login throttled after repeated failures");
        let mut r = error(
            StatusCode::TOO_MANY_REQUESTS,
            "too many failed logins; try again later",
        );
        let secs = (wait + 999) / 1000;
        if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return r;
    }
    let users = Arc::clone(&state.console.users);
    let (user, password) = (form.user.clone(), form.password);
    let verified = tokio::task::spawn_blocking(move || users.verify(&user, &password)).await;
    let role = match verified {
        Ok(Ok(Some(role))) => role,
        Ok(Ok(None)) => {
            state
                .console
                .throttle
                .failed(&form.user, &peer_ip, now_ms());
            warn!(user = %form.user, %peer, "console login refused");
            return error(StatusCode::UNAUTHORIZED, "wrong user name or password");
        }
        Ok(Err(e)) => {
            warn!(error = %e, "console login failed");
            return error(StatusCode::INTERNAL_SERVER_ERROR, "login failed");
        }
        Err(e) => {
            warn!(error = %e, "console login failed");
            return error(StatusCode::INTERNAL_SERVER_ERROR, "login failed");
        }
    };
    let principal = Principal {
        user: form.user.clone(),
        role,
    };
    state.console.throttle.succeeded(&form.user);
    let token = state.console.sessions.create(principal, now_ms());
    info!(user = %form.user, role = role.as_str(), %peer, "console login");
    let mut r = Json(json!({"user": form.user, "role": role})).into_response();
    if let Ok(v) = HeaderValue::from_str(&sessions::set_cookie(&token)) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// `POST /logout`: ends the session and clears the cookie.
async fn logout(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    for token in headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(sessions::token_from_cookie)
    {
        state.console.sessions.remove(token);
    }
    let mut r = Json(json!({"ok": true})).into_response();
    if let Ok(v) = HeaderValue::from_str(&sessions::clear_cookie()) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::tests::state;
    use axum::body::Body;
    use tower::ServiceExt;

    async fn call(
        state: &ApiState,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: Option<serde_json::Value>,
    ) -> (StatusCode, HeaderMap, String) {
        let mut req = axum::http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let body = match body {
            Some(b) => {
                req = req.header("content-type", "application/json");
                Body::from(b.to_string())
            }
            None => Body::empty(),
        };
        let response = crate::api::router(state.clone())
            .oneshot(req.body(body).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 24)
            .await
            .unwrap();
        (
            status,
            headers,
            String::from_utf8_lossy(&bytes).into_owned(),
        )
    }

    fn cookie_of(headers: &HeaderMap) -> String {
        let set = headers[header::SET_COOKIE].to_str().unwrap();
        assert!(
            set.contains("HttpOnly") && set.contains("SameSite=Strict"),
            "{set}"
        );
        set.split(';').next().unwrap().to_owned()
    }

    async fn login(s: &ApiState, user: &str, password: &str) -> (StatusCode, Option<String>) {
        let (status, headers, _) = call(
            s,
            "POST",
            "/login",
            &[],
            Some(json!({"user": user, "password": password})),
        )
        .await;
        let cookie = headers
            .contains_key(header::SET_COOKIE)
            .then(|| cookie_of(&headers));
        (status, cookie)
    }

    #[tokio::test]
    async fn closed_console_login_roles_and_logout() {
        let (_dir, s) = state(&["api-token"]);
        s.console.users.ensure_admin("admin", "pw", 0).unwrap();
        s.console
            .users
            .create("viewer", "vpw", Role::ReadOnly, 0)
            .unwrap();

        // Pages need a session; the login page and assets do not.
        let (status, headers, _) = call(&s, "GET", "/", &[], None).await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        assert_eq!(headers[header::LOCATION], "/login");
        let (status, headers, body) = call(&s, "GET", "/login", &[], None).await;
        assert_eq!(status, StatusCode::OK);
        assert!(headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .contains("script-src 'self'"));
        assert!(body.contains("/assets/login.js"));
        let (status, headers, _) = call(&s, "GET", "/assets/app.js", &[], None).await;
        assert_eq!(status, StatusCode::OK);
        assert!(headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/javascript"));
        let (status, _, _) = call(&s, "GET", "/assets/nope.js", &[], None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);

        assert_eq!(
            login(&s, "admin", "wrong").await,
            (StatusCode::UNAUTHORIZED, None)
        );
        let (status, admin) = login(&s, "admin", "pw").await;
        assert_eq!(status, StatusCode::OK);
        let admin = admin.unwrap();
        let (status, _, body) = call(&s, "GET", "/", &[("cookie", &admin)], None).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("/assets/app.js"));

        // The API takes the session as well as the bearer token.
        let (status, _, body) =
            call(&s, "GET", "/api/v1/session", &[("cookie", &admin)], None).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("\"role\":\"admin\""), "{body}");
        let bearer = [("authorization", "Bearer api-token")];
        let (status, _, _) = call(&s, "GET", "/api/v1/agents", &bearer, None).await;
        assert_eq!(status, StatusCode::OK);
        let (status, _, _) = call(&s, "GET", "/api/v1/agents", &[], None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);

        // Changes: an admin may, a read-only user and a bare token may not.
        let new = json!({"name": "ann", "password": "x", "role": "read-only"});
        let (status, _, _) = call(
            &s,
            "POST",
            "/api/v1/users",
            &[("cookie", &admin)],
            Some(new.clone()),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
        let (status, _, _) = call(
            &s,
            "POST",
            "/api/v1/users",
            &[("cookie", &admin)],
            Some(new.clone()),
        )
        .await;
        assert_eq!(status, StatusCode::CONFLICT);
        let (_, viewer) = login(&s, "viewer", "vpw").await;
        let viewer = viewer.unwrap();
        for headers in [vec![("cookie", viewer.as_str())], bearer.to_vec()] {
            let (status, _, body) =
                call(&s, "POST", "/api/v1/users", &headers, Some(new.clone())).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
            let (status, _, _) = call(&s, "DELETE", "/api/v1/users/ann", &headers, None).await;
            assert_eq!(status, StatusCode::FORBIDDEN);
        }
        // A read-only user still reads.
        let (status, _, _) = call(&s, "GET", "/api/v1/agents", &[("cookie", &viewer)], None).await;
        assert_eq!(status, StatusCode::OK);
        let (status, _, _) = call(
            &s,
            "DELETE",
            "/api/v1/users/ann",
            &[("cookie", &admin)],
            None,
        )
        .await;
        assert_eq!(status, StatusCode::NO_CONTENT);

        // Logout ends the session.
        let (status, headers, _) = call(&s, "POST", "/logout", &[("cookie", &admin)], None).await;
        assert_eq!(status, StatusCode::OK);
        assert!(headers[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("Max-Age=0"));
        let (status, _, _) = call(&s, "GET", "/api/v1/session", &[("cookie", &admin)], None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn open_console_needs_no_login() {
        let (_dir, mut s) = state(&["api-token"]);
        s.console = Arc::new(Console::new(Arc::clone(&s.console.users), true));
        let (status, headers, _) = call(&s, "GET", "/", &[], None).await;
        assert_eq!(status, StatusCode::OK);
        let cookie = cookie_of(&headers);
        // The page's own API calls pass although API tokens are required.
        let (status, _, body) =
            call(&s, "GET", "/api/v1/session", &[("cookie", &cookie)], None).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            body.contains("\"open\":true") && body.contains("admin"),
            "{body}"
        );
    }
}
