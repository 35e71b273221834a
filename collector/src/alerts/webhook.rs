//! Webhook channels: the request body (Sonde's JSON or a Slack-compatible
//! `{"text"}`), the optional HMAC signature, and one POST over http or
//! https. Queues and retries are the channel's (`delivery`).

use std::sync::Arc;

use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use tokio_rustls::rustls::ClientConfig;

use super::config::{WebhookConfig, WebhookFormat};
use super::http::{self, HttpError, Url};
use crate::storage::EventRecord;

/// One attempt to deliver `event` to the webhook.
pub async fn send(
    cfg: &WebhookConfig,
    url: &Url,
    tls: Option<Arc<ClientConfig>>,
    event: &EventRecord,
) -> Result<(), HttpError> {
    let body = body(cfg.format, event);
    let mut headers = vec![("Content-Type", "application/json".to_owned())];
    if !cfg.secret.is_empty() {
        headers.push(("X-Sonde-Signature", signature(&cfg.secret, &body)));
    }
    http::post(url, tls, &headers, &body).await
}

/// The request body for `format`.
pub fn body(format: WebhookFormat, event: &EventRecord) -> Vec<u8> {
    let value = match format {
        WebhookFormat::Json => json!({
            "version": 1,
            "source": "sonde",
            "event": {
                "id": (event.id > 0).then_some(event.id),
                "ts_ms": event.ts_ms,
                "level": event.level,
                "kind": event.kind,
                "state": event.state,
                "message": event.message,
                "app": event.app,
                "endpoint": event.endpoint,
                "host": event.host,
                "rule": event.rule,
                "value": event.value,
                "threshold": event.threshold,
            }
        }),
        WebhookFormat::Slack => {
            let icon = match (event.state.as_str(), event.level.as_str()) {
                ("resolved", _) => ":white_check_mark:",
                (_, "critical") => ":red_circle:",
                _ => ":warning:",
            };
            json!({ "text": format!("{icon} {}", event.message) })
        }
    };
    serde_json::to_vec(&value).expect("JSON values always serialise")
}

/// `sha256=HEX`, the HMAC-SHA256 of `body` with `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn event() -> EventRecord {
        EventRecord {
            id: 7,
            ts_ms: 1000,
            level: "critical".into(),
            kind: "error_rate".into(),
            state: "firing".into(),
            message: "boom".into(),
            app: Some("shop".into()),
            endpoint: None,
            host: None,
            rule: "r".into(),
            value: 100.0,
            threshold: 5.0,
            acked_ms: None,
            acked_by: None,
        }
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn bodies() {
        let v: serde_json::Value =
            serde_json::from_slice(&body(WebhookFormat::Json, &event())).unwrap();
        assert_eq!(v["version"], 1);
        assert_eq!(v["source"], "sonde");
        assert_eq!(v["event"]["id"], 7);
        assert_eq!(v["event"]["state"], "firing");
        assert_eq!(v["event"]["endpoint"], serde_json::Value::Null);
        let mut keys: Vec<&str> = v["event"]
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "app",
                "endpoint",
                "host",
                "id",
                "kind",
                "level",
                "message",
                "rule",
                "state",
                "threshold",
                "ts_ms",
                "value"
            ]
        );
        let v: serde_json::Value =
            serde_json::from_slice(&body(WebhookFormat::Slack, &event())).unwrap();
        assert_eq!(v, json!({"text": ":red_circle: boom"}));
        let mut resolved = event();
        resolved.state = "resolved".into();
        let v: serde_json::Value =
            serde_json::from_slice(&body(WebhookFormat::Slack, &resolved)).unwrap();
        assert_eq!(v["text"], ":white_check_mark: boom");
    }
}
