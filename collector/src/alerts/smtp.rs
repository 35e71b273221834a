//! Email channels: the message an event becomes (subject and plain-text
//! body naming the rule, its scope, value and time) and a small SMTP client
//! (RFC 5321) to hand it to a relay — `EHLO`, optional `STARTTLS` (RFC
//! 3207) or implicit TLS, optional `AUTH PLAIN`/`LOGIN` (RFC 4954), one
//! `MAIL FROM`, a `RCPT TO` per recipient, `DATA`, `QUIT`. One connection
//! per message; queues and retries are the channel's (`delivery`).
//!
//! It never downgrades: with `tls = "starttls"` a server that does not
//! offer STARTTLS is a failed attempt, and bytes the server sends between
//! its STARTTLS answer and the handshake end the attempt (a plain-text
//! injection, CVE-2011-0411 style).

use std::io;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use thiserror::Error;
use tokio_rustls::rustls::ClientConfig;

use super::config::{EmailConfig, SmtpTls};
use super::tls::Stream;
use crate::storage::EventRecord;

/// Longest reply line and longest reply accepted from a server.
const MAX_LINE: usize = 4096;
const MAX_REPLY_LINES: usize = 100;
/// Body lines longer than this (octets) are sent quoted-printable (SMTP's
/// limit is 998).
const MAX_PLAIN_LINE: usize = 900;

/// A plausible single address, `local@domain`: no spaces, no angle
/// brackets or other characters that could break out of `<…>` in SMTP
/// commands or headers.
pub fn valid_address(a: &str) -> bool {
    let Some((local, domain)) = a.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.is_empty()
        && a.len() <= 254
        && !a
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "<>()[],;:\"\\".contains(c))
}

/// Why one attempt failed.
#[derive(Debug, Error)]
pub enum SmtpError {
    #[error("connection failed: {0}")]
    Io(#[from] io::Error),
    #[error("TLS is not available: {0}")]
    NoTls(String),
    #[error(
        "the server does not offer STARTTLS (tls = \"starttls\" never falls back to plain text)"
    )]
    NoStartTls,
    #[error("the server offers neither AUTH PLAIN nor AUTH LOGIN")]
    NoAuth,
    #[error("{command} answered {code} {text}")]
    Refused {
        command: &'static str,
        code: u16,
        text: String,
    },
    #[error("the server's answer is not SMTP")]
    BadAnswer,
    #[error("the server sent data before the TLS handshake")]
    EarlyData,
}

/// One SMTP reply: its code and the text of each line.
#[derive(Debug)]
struct Reply {
    code: u16,
    lines: Vec<String>,
}

struct Conn {
    stream: Stream,
    buf: Vec<u8>,
}

impl Conn {
    async fn line(&mut self) -> Result<String, SmtpError> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let raw: Vec<u8> = self.buf.drain(..=i).collect();
                let text = String::from_utf8_lossy(&raw[..i]);
                return Ok(text.trim_end_matches('\r').to_owned());
            }
            if self.buf.len() > MAX_LINE {
                return Err(SmtpError::BadAnswer);
            }
            let mut chunk = [0u8; 1024];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection",
                )
                .into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn reply(&mut self) -> Result<Reply, SmtpError> {
        let mut lines = Vec::new();
        loop {
            let l = self.line().await?;
            let code: u16 = l
                .get(..3)
                .and_then(|c| c.parse().ok())
                .ok_or(SmtpError::BadAnswer)?;
            lines.push(l.get(4..).unwrap_or("").to_owned());
            match l.as_bytes().get(3) {
                Some(b'-') if lines.len() < MAX_REPLY_LINES => continue,
                None | Some(b' ') => return Ok(Reply { code, lines }),
                _ => return Err(SmtpError::BadAnswer),
            }
        }
    }

    async fn expect(&mut self, command: &'static str, ok: &[u16]) -> Result<Reply, SmtpError> {
        let r = self.reply().await?;
        if ok.contains(&r.code) {
            Ok(r)
        } else {
            Err(SmtpError::Refused {
                command,
                code: r.code,
                text: r.lines.join(" "),
            })
        }
    }

    async fn command(
        &mut self,
        command: &'static str,
        line: &str,
        ok: &[u16],
    ) -> Result<Reply, SmtpError> {
        self.stream
            .write_all(format!("{line}\r\n").as_bytes())
            .await?;
        self.stream.flush().await?;
        self.expect(command, ok).await
    }

    async fn ehlo(&mut self, name: &str) -> Result<Vec<String>, SmtpError> {
        let r = self
            .command("EHLO", &format!("EHLO {name}"), &[250])
            .await?;
        // The first line greets; the others are extensions.
        Ok(r.lines.into_iter().skip(1).collect())
    }
}

/// Whether the EHLO extensions include `keyword`; its parameters.
fn extension<'a>(caps: &'a [String], keyword: &str) -> Option<Vec<&'a str>> {
    caps.iter().find_map(|l| {
        let mut words = l.split_whitespace();
        words
            .next()
            .filter(|w| w.eq_ignore_ascii_case(keyword))
            .map(|_| words.collect())
    })
}

async fn authenticate(c: &mut Conn, caps: &[String], cfg: &EmailConfig) -> Result<(), SmtpError> {
    let mechs = extension(caps, "AUTH").unwrap_or_default();
    let has = |m: &str| mechs.iter().any(|x| x.eq_ignore_ascii_case(m));
    if has("PLAIN") {
        let token = B64.encode(format!("\0{}\0{}", cfg.username, cfg.password));
        c.command("AUTH PLAIN", &format!("AUTH PLAIN {token}"), &[235])
            .await?;
        Ok(())
    } else if has("LOGIN") {
        c.command("AUTH LOGIN", "AUTH LOGIN", &[334]).await?;
        c.command("AUTH LOGIN", &B64.encode(&cfg.username), &[334])
            .await?;
        c.command("AUTH LOGIN", &B64.encode(&cfg.password), &[235])
            .await?;
        Ok(())
    } else {
        Err(SmtpError::NoAuth)
    }
}

/// A message ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Mail {
    pub subject: String,
    /// Plain text, `\n` line ends.
    pub body: String,
}

/// Sends `mail` through the configured server. `tls` is needed unless
/// `cfg.tls` is `none`. The caller bounds the time.
pub async fn send(
    cfg: &EmailConfig,
    tls: Option<Arc<ClientConfig>>,
    mail: &Mail,
    now_ms: i64,
) -> Result<(), SmtpError> {
    let tls_config = || {
        tls.clone()
            .ok_or_else(|| SmtpError::NoTls("no CA file loaded".into()))
    };
    let mut stream = Stream::connect(&cfg.host, cfg.port).await?;
    if cfg.tls == SmtpTls::Tls {
        stream = stream.start_tls(tls_config()?, &cfg.host).await?;
    }
    let mut c = Conn {
        stream,
        buf: Vec::new(),
    };
    c.expect("the greeting", &[220]).await?;
    let mut caps = c.ehlo(&cfg.hello_name).await?;
    if cfg.tls == SmtpTls::Starttls {
        if extension(&caps, "STARTTLS").is_none() {
            return Err(SmtpError::NoStartTls);
        }
        c.command("STARTTLS", "STARTTLS", &[220]).await?;
        if !c.buf.is_empty() {
            return Err(SmtpError::EarlyData);
        }
        let stream = c.stream.start_tls(tls_config()?, &cfg.host).await?;
        c = Conn {
            stream,
            buf: Vec::new(),
        };
        caps = c.ehlo(&cfg.hello_name).await?;
    }
    if !cfg.username.is_empty() {
        authenticate(&mut c, &caps, cfg).await?;
    }
    let eight_bit = extension(&caps, "8BITMIME").is_some();
    let (data, needs_8bit) = render(cfg, mail, eight_bit, now_ms);
    let body_param = if needs_8bit { " BODY=8BITMIME" } else { "" };
    c.command(
        "MAIL FROM",
        &format!("MAIL FROM:<{}>{body_param}", cfg.from),
        &[250],
    )
    .await?;
    for to in &cfg.to {
        c.command("RCPT TO", &format!("RCPT TO:<{to}>"), &[250, 251])
            .await?;
    }
    c.command("DATA", "DATA", &[354]).await?;
    c.stream.write_all(&data).await?;
    c.stream.flush().await?;
    c.expect("the end of DATA", &[250]).await?;
    // The message is accepted; how the goodbye goes does not matter.
    let _ = c.command("QUIT", "QUIT", &[221]).await;
    let _ = c.stream.shutdown().await;
    Ok(())
}

/// Subject and body for an event.
pub fn compose(cfg: &EmailConfig, event: &EventRecord) -> Mail {
    let scope: Vec<&str> = [&event.app, &event.endpoint, &event.host]
        .into_iter()
        .filter_map(|p| p.as_deref())
        .collect();
    let scope = if scope.is_empty() {
        event.kind.clone()
    } else {
        scope.join(" ")
    };
    let prefix = if cfg.subject_prefix.is_empty() {
        String::new()
    } else {
        format!("{} ", cfg.subject_prefix)
    };
    let subject = match (event.kind.as_str(), event.state.as_str()) {
        ("test", _) => format!("{prefix}Test message: {}", event.message),
        (_, "resolved") => format!("{prefix}RESOLVED: {} ({scope})", event.rule),
        _ => format!("{prefix}FIRING {}: {} ({scope})", event.level, event.rule),
    };
    let dash = "–";
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| dash.to_owned());
    let when = jiff::Timestamp::from_millisecond(event.ts_ms)
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|_| event.ts_ms.to_string());
    let id = if event.id > 0 {
        event.id.to_string()
    } else {
        dash.to_owned()
    };
    let body = format!(
        "{message}\n\n\
         Rule:       {rule} ({kind})\n\
         Level:      {level}\n\
         State:      {state}\n\
         App:        {app}\n\
         Endpoint:   {endpoint}\n\
         Host:       {host}\n\
         Value:      {value} (threshold {threshold})\n\
         Time:       {when}\n\
         Event id:   {id}\n\n\
         -- \n\
         Sent by the Sonde collector {version}. Acknowledge the event on the console's dashboard.\n",
        message = event.message,
        rule = event.rule,
        kind = event.kind,
        level = event.level,
        state = event.state,
        app = opt(&event.app),
        endpoint = opt(&event.endpoint),
        host = opt(&event.host),
        value = number(event.value),
        threshold = number(event.threshold),
        version = env!("CARGO_PKG_VERSION"),
    );
    Mail { subject, body }
}

/// 12 for 12.0, 12.35 for 12.3456.
fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// Header text: one line, RFC 2047 encoded when it is not ASCII.
fn header_text(text: &str) -> String {
    let text: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    if text.is_ascii() {
        return text;
    }
    // Encoded words of at most 45 input bytes, cut at char boundaries.
    let mut words = Vec::new();
    let mut start = 0;
    let mut end = 0;
    for (i, c) in text.char_indices() {
        if i + c.len_utf8() - start > 45 {
            words.push(&text[start..end]);
            start = end;
        }
        end = i + c.len_utf8();
    }
    words.push(&text[start..end]);
    words
        .iter()
        .map(|w| format!("=?UTF-8?B?{}?=", B64.encode(w)))
        .collect::<Vec<_>>()
        .join("\r\n ")
}

/// Quoted-printable (RFC 2045) of CRLF-separated lines.
fn quoted_printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    for (i, line) in text.split("\r\n").enumerate() {
        if i > 0 {
            out.push_str("\r\n");
        }
        let bytes = line.as_bytes();
        let mut col = 0;
        for (j, &b) in bytes.iter().enumerate() {
            let last = j + 1 == bytes.len();
            let piece = match b {
                b' ' | b'\t' if !last => (b as char).to_string(),
                33..=60 | 62..=126 => (b as char).to_string(),
                _ => format!("={b:02X}"),
            };
            if col + piece.len() > 75 {
                out.push_str("=\r\n");
                col = 0;
            }
            col += piece.len();
            out.push_str(&piece);
        }
    }
    out
}

/// The DATA section (headers, body, the final `.`), dot-stuffed, and
/// whether it needs `BODY=8BITMIME`.
fn render(cfg: &EmailConfig, mail: &Mail, eight_bit_ok: bool, now_ms: i64) -> (Vec<u8>, bool) {
    let body = mail
        .body
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .collect::<Vec<_>>()
        .join("\r\n");
    let short = body.split("\r\n").all(|l| l.len() <= MAX_PLAIN_LINE);
    let (encoding, text, needs_8bit) = if body.is_ascii() && short {
        ("7bit", body, false)
    } else if eight_bit_ok && short {
        ("8bit", body, true)
    } else {
        ("quoted-printable", quoted_printable(&body), false)
    };
    let date = jiff::Timestamp::from_millisecond(now_ms)
        .map(|t| t.strftime("%a, %d %b %Y %H:%M:%S +0000").to_string())
        .unwrap_or_default();
    let message_id = format!(
        "<{now_ms}.{:016x}@{}>",
        rand::random::<u64>(),
        cfg.hello_name
    );
    let mut out = String::new();
    out.push_str(&format!("Date: {date}\r\n"));
    out.push_str(&format!("From: <{}>\r\n", cfg.from));
    let to: Vec<String> = cfg.to.iter().map(|a| format!("<{a}>")).collect();
    out.push_str(&format!("To: {}\r\n", to.join(", ")));
    out.push_str(&format!("Subject: {}\r\n", header_text(&mail.subject)));
    out.push_str(&format!("Message-ID: {message_id}\r\n"));
    out.push_str("MIME-Version: 1.0\r\n");
    out.push_str("Content-Type: text/plain; charset=utf-8\r\n");
    out.push_str(&format!("Content-Transfer-Encoding: {encoding}\r\n"));
    out.push_str("Auto-Submitted: auto-generated\r\n");
    out.push_str("\r\n");
    for line in text.split("\r\n") {
        if line.starts_with('.') {
            out.push('.');
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str(".\r\n");
    (out.into_bytes(), needs_8bit)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::alerts::tls::testing;
    use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    /// What the test server saw of one session.
    #[derive(Debug, Default, Clone)]
    pub struct Session {
        pub commands: Vec<String>,
        pub data: String,
        pub tls: bool,
        pub auth: Option<String>,
    }

    /// How the test server behaves.
    #[derive(Clone, Copy)]
    pub struct Behaviour {
        pub starttls: bool,
        pub eight_bit: bool,
        pub auth: bool,
        /// Answer RCPT TO with 550.
        pub refuse_rcpt: bool,
        /// Send a stray line right after the STARTTLS answer.
        pub inject_after_starttls: bool,
        /// TLS from the first byte (SMTPS).
        pub implicit_tls: bool,
    }

    impl Default for Behaviour {
        fn default() -> Self {
            Behaviour {
                starttls: true,
                eight_bit: true,
                auth: true,
                refuse_rcpt: false,
                inject_after_starttls: false,
                implicit_tls: false,
            }
        }
    }

    async fn session<S: AsyncRead + AsyncWrite + Unpin>(
        s: S,
        b: Behaviour,
        tls: bool,
        got: &mut Session,
    ) -> Option<bool> {
        let mut s = BufReader::new(s);
        let ehlo = |tls: bool| {
            let mut caps = vec!["250-test.local".to_owned()];
            if b.eight_bit {
                caps.push("250-8BITMIME".into());
            }
            if b.starttls && !tls {
                caps.push("250-STARTTLS".into());
            }
            if b.auth {
                caps.push("250-AUTH LOGIN PLAIN".into());
            }
            caps.push("250 SIZE 1000000".into());
            caps.join("\r\n") + "\r\n"
        };
        loop {
            let mut line = String::new();
            if s.read_line(&mut line).await.ok()? == 0 {
                return Some(false);
            }
            let line = line.trim_end().to_owned();
            got.commands.push(line.clone());
            let upper = line.to_ascii_uppercase();
            let answer = if upper.starts_with("EHLO") {
                ehlo(tls)
            } else if upper == "STARTTLS" && !tls {
                let mut a = "220 go ahead\r\n".to_owned();
                if b.inject_after_starttls {
                    a.push_str("250 injected\r\n");
                }
                s.write_all(a.as_bytes()).await.ok()?;
                return Some(true);
            } else if upper.starts_with("AUTH PLAIN ") {
                got.auth = Some(line[11..].to_owned());
                "235 ok\r\n".into()
            } else if upper.starts_with("MAIL FROM:") {
                "250 ok\r\n".into()
            } else if upper.starts_with("RCPT TO:") {
                if b.refuse_rcpt {
                    "550 no such user\r\n".into()
                } else {
                    "250 ok\r\n".into()
                }
            } else if upper == "DATA" {
                s.write_all(b"354 go\r\n").await.ok()?;
                let mut data = String::new();
                loop {
                    let mut l = String::new();
                    s.read_line(&mut l).await.ok()?;
                    if l == ".\r\n" || l.is_empty() {
                        break;
                    }
                    data.push_str(&l);
                }
                got.data = data;
                "250 queued\r\n".into()
            } else if upper == "QUIT" {
                s.write_all(b"221 bye\r\n").await.ok()?;
                return Some(false);
            } else {
                "502 what\r\n".into()
            };
            s.write_all(answer.as_bytes()).await.ok()?;
        }
    }

    /// A one-connection-at-a-time SMTP server on loopback; each finished
    /// session is sent on the channel.
    pub async fn server(
        b: Behaviour,
        acceptor: Option<tokio_rustls::TlsAcceptor>,
    ) -> (u16, mpsc::UnboundedReceiver<Session>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut got = Session::default();
                if b.implicit_tls {
                    let a = acceptor.clone().expect("implicit TLS needs an acceptor");
                    if let Ok(mut t) = a.accept(s).await {
                        got.tls = true;
                        let _ = t.write_all(b"220 test.local ESMTP\r\n").await;
                        session(t, b, true, &mut got).await;
                    }
                    let _ = tx.send(got);
                    continue;
                }
                let _ = s.write_all(b"220 test.local ESMTP\r\n").await;
                if session(&mut s, b, false, &mut got).await == Some(true) {
                    if let Some(a) = &acceptor {
                        if let Ok(t) = a.accept(s).await {
                            got.tls = true;
                            session(t, b, true, &mut got).await;
                        }
                    }
                }
                let _ = tx.send(got);
            }
        });
        (port, rx)
    }

    fn cfg(port: u16, tls: SmtpTls, ca: &str) -> EmailConfig {
        EmailConfig {
            name: "mail".into(),
            host: "127.0.0.1".into(),
            port,
            tls,
            ca_file: ca.into(),
            from: "sonde@example.com".into(),
            to: vec!["ops@example.com".into(), "dev@example.com".into()],
            ..EmailConfig::default()
        }
    }

    fn event() -> EventRecord {
        EventRecord {
            id: 42,
            ts_ms: 1_767_225_600_000,
            level: "critical".into(),
            kind: "error_rate".into(),
            state: "firing".into(),
            message: "[critical] checkout-errors: shop /checkout — error rate 12.5 %".into(),
            app: Some("shop".into()),
            endpoint: Some("/checkout".into()),
            host: None,
            rule: "checkout-errors".into(),
            value: 12.5,
            threshold: 5.0,
            acked_ms: None,
            acked_by: None,
        }
    }

    #[test]
    fn addresses() {
        assert!(valid_address("ops@example.com"));
        assert!(valid_address("a.b+c@d"));
        for bad in [
            "",
            "ops",
            "@x",
            "x@",
            "a b@c",
            "a@b>",
            "a@b\r\nRCPT TO:<x@y",
            "a<@b",
        ] {
            assert!(!valid_address(bad), "{bad:?}");
        }
    }

    #[test]
    fn message_names_the_rule() {
        let c = cfg(25, SmtpTls::None, "");
        let m = compose(&c, &event());
        assert_eq!(
            m.subject,
            "[Sonde] FIRING critical: checkout-errors (shop /checkout)"
        );
        assert!(m.body.starts_with(&event().message), "{}", m.body);
        assert!(m.body.contains("Rule:       checkout-errors (error_rate)"));
        assert!(m.body.contains("Value:      12.50 (threshold 5)"));
        assert!(m.body.contains("Time:       2026-01-01 00:00:00 UTC"));
        let mut r = event();
        r.state = "resolved".into();
        assert_eq!(
            compose(&c, &r).subject,
            "[Sonde] RESOLVED: checkout-errors (shop /checkout)"
        );
    }

    #[test]
    fn encodings() {
        assert_eq!(header_text("plain\r\nBcc: x@y"), "plain  Bcc: x@y");
        let enc = header_text("déploiement — 配信");
        assert!(
            enc.starts_with("=?UTF-8?B?") && enc.ends_with("?="),
            "{enc}"
        );
        let long = "é".repeat(60);
        let enc = header_text(&long);
        assert!(enc.split("\r\n ").all(|w| w.len() <= 75), "{enc}");
        let qp = quoted_printable("a=b — c \r\n.x");
        assert_eq!(qp, "a=3Db =E2=80=94 c=20\r\n.x");
        let long = "x".repeat(200);
        assert!(quoted_printable(&long).split("\r\n").all(|l| l.len() <= 76));

        let c = cfg(25, SmtpTls::None, "");
        let mail = Mail {
            subject: "s".into(),
            body: ".hidden\nnon-ascii —\n".into(),
        };
        let (data, needs) = render(&c, &mail, true, 0);
        let data = String::from_utf8(data).unwrap();
        assert!(needs);
        assert!(data.contains("Content-Transfer-Encoding: 8bit\r\n"));
        assert!(data.contains("\r\n\r\n..hidden\r\n"), "dot-stuffed: {data}");
        assert!(data.ends_with("\r\n.\r\n"));
        let (data, needs) = render(&c, &mail, false, 0);
        let data = String::from_utf8(data).unwrap();
        assert!(!needs);
        assert!(data.contains("Content-Transfer-Encoding: quoted-printable\r\n"));
        assert!(data.contains("non-ascii =E2=80=94"), "{data}");
    }

    #[tokio::test]
    async fn plain_delivery() {
        let (port, mut rx) = server(
            Behaviour {
                starttls: false,
                auth: false,
                ..Behaviour::default()
            },
            None,
        )
        .await;
        let c = cfg(port, SmtpTls::None, "");
        let mail = compose(&c, &event());
        send(&c, None, &mail, 0).await.unwrap();
        let s = rx.recv().await.unwrap();
        assert!(!s.tls);
        assert_eq!(s.commands[0], "EHLO sonde-collector");
        assert_eq!(s.commands[1], "MAIL FROM:<sonde@example.com> BODY=8BITMIME");
        assert_eq!(s.commands[2], "RCPT TO:<ops@example.com>");
        assert_eq!(s.commands[3], "RCPT TO:<dev@example.com>");
        assert!(s
            .data
            .contains("Subject: [Sonde] FIRING critical: checkout-errors (shop /checkout)\r\n"));
        assert!(s.data.contains("error rate 12.5 %"), "{}", s.data);
        assert_eq!(s.auth, None);
    }

    #[tokio::test]
    async fn starttls_and_auth() {
        let pki = testing::pki();
        let (port, mut rx) = server(Behaviour::default(), Some(pki.acceptor())).await;
        let mut c = cfg(port, SmtpTls::Starttls, pki.ca.to_str().unwrap());
        c.username = "sonde".into();
        c.password = "pw".into();
        let tls = crate::alerts::tls::client_config(&c.ca_file).unwrap();
        send(&c, Some(tls), &compose(&c, &event()), 0)
            .await
            .unwrap();
        let s = rx.recv().await.unwrap();
        assert!(s.tls, "{s:?}");
        // EHLO, STARTTLS, then EHLO again inside TLS, and AUTH only there.
        assert_eq!(
            s.commands[..3],
            ["EHLO sonde-collector", "STARTTLS", "EHLO sonde-collector"]
        );
        assert_eq!(s.auth.as_deref(), Some(B64.encode("\0sonde\0pw").as_str()));
        assert!(s.data.contains("checkout-errors"));
    }

    #[tokio::test]
    async fn implicit_tls() {
        let pki = testing::pki();
        let (port, mut rx) = server(
            Behaviour {
                implicit_tls: true,
                ..Behaviour::default()
            },
            Some(pki.acceptor()),
        )
        .await;
        let c = cfg(port, SmtpTls::Tls, pki.ca.to_str().unwrap());
        let tls = crate::alerts::tls::client_config(&c.ca_file).unwrap();
        send(&c, Some(tls), &compose(&c, &event()), 0)
            .await
            .unwrap();
        let s = rx.recv().await.unwrap();
        assert!(s.tls);
        assert_eq!(s.commands[0], "EHLO sonde-collector");
        assert!(!s.commands.iter().any(|c| c == "STARTTLS"));
        assert!(s.data.contains("checkout-errors"));
    }

    #[tokio::test]
    async fn refusals_are_errors() {
        let pki = testing::pki();
        let tls = crate::alerts::tls::client_config(pki.ca.to_str().unwrap()).unwrap();
        // No STARTTLS offered: no silent downgrade.
        let (port, _rx) = server(
            Behaviour {
                starttls: false,
                ..Behaviour::default()
            },
            None,
        )
        .await;
        let c = cfg(port, SmtpTls::Starttls, "");
        let e = send(&c, Some(Arc::clone(&tls)), &compose(&c, &event()), 0)
            .await
            .unwrap_err();
        assert!(matches!(e, SmtpError::NoStartTls), "{e}");
        // Injected plain text after the STARTTLS answer.
        let (port, _rx) = server(
            Behaviour {
                inject_after_starttls: true,
                ..Behaviour::default()
            },
            Some(pki.acceptor()),
        )
        .await;
        let c = cfg(port, SmtpTls::Starttls, "");
        let e = send(&c, Some(Arc::clone(&tls)), &compose(&c, &event()), 0)
            .await
            .unwrap_err();
        assert!(matches!(e, SmtpError::EarlyData), "{e}");
        // A refused recipient.
        let (port, _rx) = server(
            Behaviour {
                refuse_rcpt: true,
                ..Behaviour::default()
            },
            None,
        )
        .await;
        let c = cfg(port, SmtpTls::None, "");
        let e = send(&c, None, &compose(&c, &event()), 0).await.unwrap_err();
        assert_eq!(e.to_string(), "RCPT TO answered 550 no such user");
    }
}
