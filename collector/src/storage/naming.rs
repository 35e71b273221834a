//! Endpoint names as the collector stores them: the operator's rules
//! (`[storage] endpoint_rules`, regular expressions over the request URL)
//! first, then the name the extension sent, then the default grouping of
//! identifier-like path segments (CONTRACT.md). Applied when a record
//! arrives; changing the rules does not rename what is stored.

use std::borrow::Cow;

use regex::Regex;
use sonde_core::endpoint::EndpointNamer;
use sonde_proto::v1::RequestRecord;

/// One rule: when `pattern` matches the URL (and the app is `app`, when
/// given), the endpoint is `name` with `$1`, `${name}` replaced by the
/// pattern's captures.
#[derive(Debug, Clone)]
pub struct EndpointRule {
    pub pattern: Regex,
    pub name: String,
    pub app: Option<String>,
}

/// The rules, in order, then the default naming.
#[derive(Debug, Clone, Default)]
pub struct EndpointNaming {
    pub rules: Vec<EndpointRule>,
    pub namer: EndpointNamer,
}

impl EndpointNaming {
    /// Compiles `(pattern, name, app)` rules; on a bad pattern, its index
    /// and the reason.
    pub fn new(rules: &[(String, String, Option<String>)]) -> Result<Self, (usize, String)> {
        let rules = rules
            .iter()
            .enumerate()
            .map(|(i, (pattern, name, app))| {
                let pattern = Regex::new(pattern).map_err(|e| (i, e.to_string()))?;
                Ok(EndpointRule {
                    pattern,
                    name: name.clone(),
                    app: app.clone(),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(EndpointNaming {
            rules,
            namer: EndpointNamer::default(),
        })
    }

    /// The endpoint `record` is stored under.
    pub fn name<'a>(&self, record: &'a RequestRecord) -> Cow<'a, str> {
        for rule in &self.rules {
            if rule.app.as_deref().is_some_and(|a| a != record.app) {
                continue;
            }
            if let Some(caps) = rule.pattern.captures(&record.url) {
                let mut out = String::new();
                caps.expand(&rule.name, &mut out);
                if !out.is_empty() {
                    return Cow::Owned(out);
                }
            }
        }
        if record.endpoint.is_empty() {
            Cow::Owned(self.namer.name(&record.url))
        } else {
            Cow::Borrowed(record.endpoint.as_str())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(app: &str, url: &str, endpoint: &str) -> RequestRecord {
        RequestRecord {
            app: app.into(),
            url: url.into(),
            endpoint: endpoint.into(),
            ..Default::default()
        }
    }

    #[test]
    fn default_is_the_contract_naming() {
        let n = EndpointNaming::default();
        assert_eq!(
            n.name(&rec(
                "a",
                "/api/v6/GetHaveDungdung/aa081ad2636f7e0c9b1d",
                ""
            )),
            "/api/v6/GetHaveDungdung/{token}"
        );
        assert_eq!(
            n.name(&rec(
                "a",
                "/api/v6/GetHaveDungdung/26516c92331b44aa01fe?x=1",
                ""
            )),
            "/api/v6/GetHaveDungdung/{token}"
        );
        assert_eq!(n.name(&rec("a", "/users/7", "/from-ext")), "/from-ext");
    }

    #[test]
    fn rules_come_first_in_order_with_captures() {
        let n = EndpointNaming::new(&[
            (
                r"^/index\.php\?(?:.*&)?r=([^&]*)".into(),
                "/index.php?r=$1".into(),
                None,
            ),
            (r"^/shop/".into(), "/shop/*".into(), Some("shop".into())),
            (r"^/(?P<v>v\d+)/".into(), "/${v}/*".into(), None),
        ])
        .unwrap();
        assert_eq!(
            n.name(&rec(
                "a",
                "/index.php?lang=ko&r=site/login&x=2",
                "/index.php"
            )),
            "/index.php?r=site/login"
        );
        assert_eq!(n.name(&rec("shop", "/shop/cart/9", "")), "/shop/*");
        assert_eq!(
            n.name(&rec("blog", "/shop/cart/9", "")),
            "/shop/cart/{num}",
            "the rule is for app shop only"
        );
        assert_eq!(n.name(&rec("a", "/v2/items", "")), "/v2/*");
        assert_eq!(n.name(&rec("a", "/other", "/ext")), "/ext");
    }

    #[test]
    fn bad_pattern_is_named() {
        let e = EndpointNaming::new(&[
            ("^ok$".into(), "x".into(), None),
            ("(".into(), "y".into(), None),
        ])
        .unwrap_err();
        assert_eq!(e.0, 1);
    }
}
