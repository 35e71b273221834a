//! Database instance names from connection strings, as shown on SQL spans:
//! `mysql://127.0.0.1:3306/test`. Credentials are never included.

/// The instance name for a PDO DSN and its driver name. The DSN may carry
/// the driver prefix (`mysql:host=h;port=p;dbname=d`) or not (PDO keeps
/// `data_source` without it: `host=h;dbname=d`, `:memory:`, `/path`).
pub fn pdo_instance(driver: &str, dsn: &str) -> String {
    let body = dsn
        .strip_prefix(driver)
        .and_then(|r| r.strip_prefix(':'))
        .unwrap_or(dsn);
    if driver == "sqlite" {
        return format!("sqlite://{body}");
    }
    let mut host = "";
    let mut port = "";
    let mut db = "";
    let mut socket = "";
    // pgsql also accepts space-separated `key=value` pairs.
    for pair in body.split([';', ' ']) {
        if let Some((k, v)) = pair.split_once('=') {
            match k.trim().to_ascii_lowercase().as_str() {
                "host" => host = v.trim(),
                "port" => port = v.trim(),
                "dbname" => db = v.trim(),
                "unix_socket" => socket = v.trim(),
                _ => {}
            }
        }
    }
    instance(driver, host, port, db, socket)
}

/// The instance name from parts (mysqli, pg_connect); missing ports take
/// the driver's default.
pub fn instance(driver: &str, host: &str, port: &str, db: &str, socket: &str) -> String {
    let scheme = match driver {
        "pgsql" | "postgres" | "postgresql" => "postgresql",
        "mysql" | "mysqli" => "mysql",
        other => other,
    };
    let default_port = match scheme {
        "postgresql" => "5432",
        "mysql" => "3306",
        "redis" => "6379",
        "memcached" => "11211",
        _ => "",
    };
    let host = if host.is_empty() && !socket.is_empty() {
        socket
    } else if host.is_empty() {
        "localhost"
    } else {
        host
    };
    let port = if port.is_empty() { default_port } else { port };
    let mut out = format!("{scheme}://{host}");
    if !port.is_empty() && !host.starts_with('/') {
        out.push(':');
        out.push_str(port);
    }
    // Key-value stores have no database path.
    if !(db.is_empty() && matches!(scheme, "redis" | "memcached")) {
        out.push('/');
        out.push_str(db);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pdo_dsns() {
        assert_eq!(
            pdo_instance(
                "mysql",
                "mysql:host=127.0.0.1;port=3306;dbname=test;charset=utf8mb4"
            ),
            "mysql://127.0.0.1:3306/test"
        );
        assert_eq!(
            pdo_instance("mysql", "mysql:host=db;dbname=app"),
            "mysql://db:3306/app"
        );
        assert_eq!(
            pdo_instance(
                "pgsql",
                "pgsql:host=127.0.0.1 port=5432 dbname=test user=postgres password=x"
            ),
            "postgresql://127.0.0.1:5432/test"
        );
        assert_eq!(
            pdo_instance("sqlite", "sqlite:/tmp/demo.sqlite"),
            "sqlite:///tmp/demo.sqlite"
        );
        assert_eq!(pdo_instance("sqlite", ":memory:"), "sqlite://:memory:");
        assert_eq!(
            pdo_instance("mysql", "host=db;port=3307;dbname=x"),
            "mysql://db:3307/x"
        );
        assert_eq!(
            pdo_instance(
                "mysql",
                "mysql:unix_socket=/run/mysqld/mysqld.sock;dbname=test"
            ),
            "mysql:///run/mysqld/mysqld.sock/test"
        );
    }
}
