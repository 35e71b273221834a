//! `GET /api/v1/openapi.json`: the OpenAPI 3.1 description of the HTTP API,
//! written from docs/collector.md's table by `scripts/openapi-from-docs.py`.
//! A test keeps it and the router in step.

use axum::http::header;
use axum::response::IntoResponse;

/// The description, as generated.
pub const DOCUMENT: &str = include_str!("openapi.json");

pub async fn document() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// (path, method) of every route in the router's source, paths in
    /// OpenAPI form (`/transactions/:id` → `/api/v1/transactions/{id}`).
    fn routes() -> BTreeSet<(String, String)> {
        let src = include_str!("mod.rs");
        let start = src.find("pub fn router(").expect("the router");
        let body = &src[start..];
        let end = body.find("\n}\n").expect("its end");
        let body = &body[..end];
        let mut out = BTreeSet::new();
        let mut prefix = "/api/v1";
        for chunk in body.split(".route(").skip(1) {
            let path = chunk.split('"').nth(1).expect("a path");
            // The API router comes first; the top-level one starts with
            // `Router::new()` again.
            let text = chunk.split("Router::new()").next().unwrap_or(chunk);
            let full = if ["/metrics", "/healthz"].contains(&path) {
                path.to_owned()
            } else {
                format!("{prefix}{path}")
            };
            let full = full
                .split('/')
                .map(|seg| match seg.strip_prefix(':') {
                    Some(name) => format!("{{{name}}}"),
                    None => seg.to_owned(),
                })
                .collect::<Vec<_>>()
                .join("/");
            for m in ["get", "post", "put", "delete"] {
                if text.contains(&format!("{m}(")) {
                    out.insert((full.clone(), m.to_owned()));
                }
            }
            if chunk.contains("Router::new()") {
                prefix = "";
            }
        }
        out
    }

    #[test]
    fn the_description_lists_exactly_the_routes() {
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).expect("valid JSON");
        assert_eq!(doc["openapi"], "3.1.0");
        let mut documented = BTreeSet::new();
        for (path, ops) in doc["paths"].as_object().unwrap() {
            for (method, op) in ops.as_object().unwrap() {
                assert!(op["responses"]["200"].is_object(), "{method} {path}");
                documented.insert((path.clone(), method.clone()));
            }
        }
        let routed = routes();
        assert!(routed.len() > 20, "parsed the router: {routed:?}");
        let missing: Vec<_> = routed.difference(&documented).collect();
        let stale: Vec<_> = documented.difference(&routed).collect();
        assert!(
            missing.is_empty() && stale.is_empty(),
            "run scripts/openapi-from-docs.py after updating docs/collector.md's API table.\n\
             routed but not described: {missing:?}\ndescribed but not routed: {stale:?}"
        );
    }

    #[tokio::test]
    async fn served_as_json() {
        let (_dir, s) = crate::api::tests::state(&[]);
        let (status, body) = crate::api::tests::get(&s, "/api/v1/openapi.json", None).await;
        assert_eq!(status, axum::http::StatusCode::OK);
        assert_eq!(body["info"]["title"], "Sonde collector API");
    }
}
