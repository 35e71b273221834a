//! The agent-side cost of turning raw frames into records: frames shaped
//! like the realistic page's (10 statements with inlined ids, a fetch, a
//! curl call), made once, then encoded PASSES times by one `Encoder`.
//!
//! Usage: cargo run --release -p sonde-capture --example encode_raw -- [FRAMES] [PASSES]
use sonde_capture::raw::{write, Encoder};
use sonde_capture::record::{Captured, Ids};
use sonde_capture::spans::{Library, RawSpan, SpanBuf};
use sonde_proto::v1::SpanKind;

fn raw_frame(i: u64, buf: &mut SpanBuf, out: &mut Vec<u8>) {
    buf.clear();
    let db = buf.db(1, || {
        Some((&b"mysql"[..], &b"host=127.0.0.1;port=3306;dbname=app"[..]))
    });
    for n in 0..10u64 {
        let sql = match n % 3 {
            0 => format!(
                "SELECT id, title, likes FROM photos WHERE id = {}",
                (i + n) % 5000
            ),
            1 => format!(
                "UPDATE photos SET views = views + 1 WHERE id = {}",
                (i * 7 + n) % 5000
            ),
            _ => "SELECT id, name FROM users WHERE lang = 'ko' ORDER BY id LIMIT 20".to_string(),
        };
        let text = buf.text(sql.as_bytes());
        let idx = buf.push(RawSpan {
            kind: SpanKind::Sql as i32,
            library: Library::PDO,
            start_ns: 10_000 + n * 300_000,
            duration_ns: 250_000,
            text,
            db,
            rows: 1,
            calls: 1,
            ..Default::default()
        });
        if n == 9 {
            buf.open_result(77, idx);
            buf.fetch(77, Library::PDO, 3_100_000, 3_300_000, 100);
        }
    }
    buf.external(
        Library::CURL,
        3_400_000,
        500_000,
        b"http://127.0.0.1:8080/t/callee.php?via=curl",
        b"GET",
        200,
        b"",
        [7; 8],
    );
    let mut record = [0u8; 16];
    record[..8].copy_from_slice(&i.to_be_bytes());
    let ids = Ids {
        record,
        trace: record,
        span: [1; 8],
        ..Default::default()
    };
    let uri = format!("/api/v6/photos?lang=ko&page={}", i % 7);
    let c = Captured {
        app: "bench",
        pid: 4242,
        method: "GET",
        uri: &uri,
        status: 200,
        client_ip: "10.0.0.7",
        visitor_id: "v-17",
        http_host: "bench.local",
        ids: Some(&ids),
        sapi: "fpm-fcgi",
        php_version: "8.2.36",
        ext_version: "0.1.0",
        ..Default::default()
    };
    write(out, &c, "", Some((buf, 0.4)));
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let mut buf = SpanBuf::new(100);
    let frames: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let mut o = Vec::new();
            raw_frame(i, &mut buf, &mut o);
            o
        })
        .collect();
    let mut enc = Encoder::new([1, 2]);
    let passes: u64 = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1);
    let t = std::time::Instant::now();
    let mut total = 0usize;
    for _ in 0..passes {
        for f in &frames {
            total += enc.encode(f).unwrap().len();
        }
    }
    let el = t.elapsed();
    println!(
        "{} frames x{}, {:.2} µs each, {} bytes out",
        n,
        passes,
        el.as_secs_f64() * 1e6 / (n * passes) as f64,
        total
    );
}
