//! The end-to-end harness: starts the real collector, agent, php-fpm (with
//! the real extension) and nginx on loopback, with a temp directory and
//! ports chosen at run time, and stops all of them when dropped — also when
//! a test fails. Binaries come from the workspace target directory, so the
//! test command builds the workspace first.
#![forbid(unsafe_code)]

pub mod http;

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// The workspace root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The directory holding the built binaries: `SONDE_BIN_DIR`, else the
/// profile directory this test binary was built into (target/debug).
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SONDE_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test-binary>
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .to_path_buf()
}

/// Path of a built artifact, with a clear error when it is missing.
pub fn artifact(name: &str) -> Result<PathBuf> {
    let p = bin_dir().join(name);
    if !p.exists() {
        bail!(
            "{} not found: build the workspace first (`cargo build --workspace`), \
             or set SONDE_BIN_DIR",
            p.display()
        );
    }
    Ok(p)
}

/// Now, Unix epoch milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A loopback port that was free a moment ago, and never handed out
/// before in this test process. Tests run in parallel threads, each
/// starting servers on ports from here: without the record, two stacks
/// could be given the same port (the first's listener is closed before
/// its server binds), and one stack's nginx would then pass its requests
/// to the other's nginx instead of its own php-fpm — a 502 on the first
/// request, now and then.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().expect("local_addr").port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Waits until `cond` holds or `timeout` passes.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("timed out after {timeout:?} waiting for {what}")
}

fn port_open(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// A started process, in a process group of its own; stopped on drop
/// (SIGTERM to the group, SIGKILL after a grace period).
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    child: Child,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr going to `log`.
    pub fn start(name: &str, cmd: Command, log: PathBuf) -> Result<Proc> {
        let out = fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
        Self::spawn(name, cmd, log, out)
    }

    /// As [`Proc::start`], adding to `log` rather than replacing it.
    pub fn start_appending(name: &str, cmd: Command, log: PathBuf) -> Result<Proc> {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("open {}", log.display()))?;
        Self::spawn(name, cmd, log, out)
    }

    fn spawn(name: &str, mut cmd: Command, log: PathBuf, out: fs::File) -> Result<Proc> {
        let err = out.try_clone()?;
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd
            .spawn()
            .with_context(|| format!("start {name}: {cmd:?}"))?;
        Ok(Proc {
            name: name.to_string(),
            child,
            log,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Still running?
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The process's log so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `sig` to the process group and waits up to `grace` for the
    /// process to exit; kills the group when it does not. Returns the exit
    /// status when it exited by itself.
    pub fn stop_with(&mut self, sig: Signal, grace: Duration) -> Option<std::process::ExitStatus> {
        let pgid = Pid::from_raw(self.child.id() as i32);
        if let Ok(Some(st)) = self.child.try_wait() {
            let _ = killpg(pgid, Signal::SIGKILL);
            return Some(st);
        }
        let _ = killpg(pgid, sig);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                // Children of the group (php-fpm workers) go too.
                let _ = killpg(pgid, Signal::SIGKILL);
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = killpg(pgid, Signal::SIGKILL);
        let _ = self.child.wait();
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop_with(Signal::SIGTERM, Duration::from_secs(5));
    }
}

/// Ports and paths of one running stack.
#[derive(Debug)]
pub struct Stack {
    pub dir: tempfile::TempDir,
    pub grpc_port: u16,
    pub http_port: u16,
    pub web_port: u16,
    pub fpm_port: u16,
    /// The first agent's Prometheus endpoint (`/metrics`).
    pub agent_metrics_port: u16,
    pub agent_socket: PathBuf,
    pub agent_token: String,
    /// `http` or `https`: how agents reach the collector.
    pub grpc_scheme: &'static str,
    /// Appended to every agent's config.
    pub agent_extra: String,
    // Dropped in reverse start order: nginx, php-fpm, agent, collector.
    pub procs: Vec<Proc>,
}

/// What to start.
#[derive(Debug, Clone)]
pub struct StackOptions {
    pub collector: bool,
    pub agent: bool,
    /// Load the extension into php-fpm.
    pub extension: bool,
    pub app_name: String,
    /// Extra `-d name=value` settings for php-fpm (e.g. opcache and JIT).
    pub fpm_ini: Vec<String>,
    /// TOML appended to the collector's config (e.g. `[alerts]` tables).
    pub collector_extra: String,
    /// Extra lines for the php-fpm pool (e.g. `pm.max_requests = 5`).
    pub fpm_pool: Vec<String>,
    /// Start php-fpm and nginx.
    pub web: bool,
    /// Where the collector's gRPC port listens (agents in network
    /// namespaces need an address on their bridge, e.g. `0.0.0.0`).
    pub grpc_ip: String,
    /// Lines added to the collector's `[grpc]` table (e.g. `tls_cert = …`).
    pub grpc_extra: String,
    /// Agents reach the collector over `https://`.
    pub grpc_https: bool,
    /// TOML appended to every agent's config (after its top-level keys, so
    /// tables such as `[tls]` fit); `{web_port}` becomes nginx's port.
    pub agent_extra: String,
    /// nginx writes `access.log` in the stack's directory, one line per
    /// request: `$request_id $status $request_uri` (an independent ledger).
    pub access_log: bool,
}

impl Default for StackOptions {
    fn default() -> Self {
        StackOptions {
            collector: true,
            agent: true,
            extension: true,
            app_name: "fanapp".into(),
            fpm_ini: Vec::new(),
            collector_extra: String::new(),
            fpm_pool: Vec::new(),
            web: true,
            grpc_ip: "127.0.0.1".into(),
            grpc_extra: String::new(),
            grpc_https: false,
            agent_extra: String::new(),
            access_log: false,
        }
    }
}

/// php-fpm's binary (Debian names it by version).
pub fn php_fpm_bin() -> Result<PathBuf> {
    for cand in ["/usr/sbin/php-fpm8.2", "/usr/sbin/php-fpm"] {
        if Path::new(cand).exists() {
            return Ok(cand.into());
        }
    }
    bail!("php-fpm not found (the README's test command installs php8.2-fpm)")
}

impl Stack {
    /// Starts the requested parts and waits until each answers.
    pub fn start(opts: &StackOptions) -> Result<Stack> {
        let dir = tempfile::Builder::new().prefix("sonde-e2e-").tempdir()?;
        let mut stack = Stack {
            grpc_port: free_port(),
            http_port: free_port(),
            web_port: free_port(),
            fpm_port: free_port(),
            agent_metrics_port: free_port(),
            agent_socket: dir.path().join("agent.sock"),
            agent_token: "e2e-agent-token".into(),
            grpc_scheme: if opts.grpc_https { "https" } else { "http" },
            agent_extra: opts.agent_extra.clone(),
            dir,
            procs: Vec::new(),
        };
        if opts.collector {
            stack.start_collector(&opts.grpc_ip, &opts.grpc_extra, &opts.collector_extra)?;
        }
        if opts.agent {
            let token = stack.agent_token.clone();
            let socket = stack.agent_socket.clone();
            stack.start_agent("agent", &token, &socket)?;
        }
        if opts.web {
            stack.start_php_fpm(opts)?;
            stack.start_nginx(opts.access_log)?;
        }
        Ok(stack)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn start_collector(&mut self, grpc_ip: &str, grpc_extra: &str, extra: &str) -> Result<()> {
        let cfg = self.path("collector.toml");
        fs::write(
            &cfg,
            format!(
                "[grpc]\nlisten = \"{grpc_ip}:{}\"\n{grpc_extra}\n[http]\nlisten = \"127.0.0.1:{}\"\n\
                 [storage]\npath = \"{}\"\n[auth]\nagent_tokens = [\"{}\"]\n{extra}",
                self.grpc_port,
                self.http_port,
                self.path("collector-data").display(),
                self.agent_token
            ),
        )?;
        self.spawn_collector()
    }

    /// Starts the collector with the config written at stack start (its
    /// data directory and ports too): after [`Stack::stop`], a restart.
    pub fn spawn_collector(&mut self) -> Result<()> {
        let cfg = self.path("collector.toml");
        let mut cmd = Command::new(artifact("sonde-collector")?);
        cmd.arg("--config").arg(&cfg).env("RUST_LOG", "info");
        let log = self.path("collector.log");
        // Appended: a restarted collector keeps the earlier log.
        let p = Proc::start_appending("collector", cmd, log)?;
        self.procs.push(p);
        let (g, h) = (self.grpc_port, self.http_port);
        self.wait_alive("collector", || port_open(g) && port_open(h))
    }

    /// Stops the named process with `sig` (waiting up to 30 s) and forgets
    /// it; its exit status if it exited by itself.
    pub fn stop(&mut self, name: &str, sig: Signal) -> Option<std::process::ExitStatus> {
        let i = self.procs.iter().position(|p| p.name == name)?;
        let mut p = self.procs.remove(i);
        p.stop_with(sig, Duration::from_secs(30))
    }

    /// Starts an agent named `name` with `token`, listening on `socket`.
    pub fn start_agent(&mut self, name: &str, token: &str, socket: &Path) -> Result<()> {
        let cfg = self.path(&format!("{name}.toml"));
        fs::write(
            &cfg,
            format!(
                "collector = \"{scheme}://127.0.0.1:{}\"\ntoken = \"{}\"\nsocket = \"{}\"\n\
                 socket_group = \"root\"\nspool_dir = \"{}\"\nflush_interval_ms = 200\n\
                 hostname = \"{name}-host\"\nmetrics_listen = \"{metrics}\"\n{extra}\n",
                self.grpc_port,
                token,
                socket.display(),
                self.path(&format!("{name}-spool")).display(),
                scheme = self.grpc_scheme,
                extra = self
                    .agent_extra
                    .replace("{web_port}", &self.web_port.to_string()),
                metrics = if name == "agent" {
                    format!("127.0.0.1:{}", self.agent_metrics_port)
                } else {
                    String::new()
                },
            ),
        )?;
        let mut cmd = Command::new(artifact("sonde-agent")?);
        cmd.arg("--config").arg(&cfg).env("RUST_LOG", "info");
        let p = Proc::start(name, cmd, self.path(&format!("{name}.log")))?;
        self.procs.push(p);
        let s = socket.to_path_buf();
        self.wait_alive(name, move || s.exists())
    }

    fn start_php_fpm(&mut self, opts: &StackOptions) -> Result<()> {
        let fpm_port = self.fpm_port;
        let cfg = self.path("php-fpm.conf");
        fs::write(
            &cfg,
            format!(
                "[global]\npid = {dir}/php-fpm.pid\nerror_log = {dir}/php-fpm-error.log\n\
                 daemonize = no\n\n[www]\nlisten = 127.0.0.1:{fpm_port}\n\
                 pm = static\npm.max_children = 4\ncatch_workers_output = yes\n\
                 clear_env = no\n\
                 php_admin_value[error_log] = {dir}/php-errors.log\n\
                 php_admin_value[log_errors] = On\n\
                 php_admin_value[sonde.app_name] = {app_name}\n\
                 php_admin_value[sonde.agent_socket] = {sock}\n\
                 env[SONDE_DEMO_DB] = {dir}/demo.sqlite\n{extra}\n",
                extra = opts.fpm_pool.join("\n"),
                dir = self.dir.path().display(),
                app_name = opts.app_name,
                sock = self.agent_socket.display(),
            ),
        )?;
        // SONDE_E2E_FPM_WRAP runs php-fpm under a tool, e.g. "valgrind
        // --log-file=/tmp/vg.%p" (memcheck follows the forked workers; set
        // USE_ZEND_ALLOC=0 too so PHP's allocations are checked).
        let wrap = std::env::var("SONDE_E2E_FPM_WRAP").unwrap_or_default();
        let mut wrap = wrap.split_whitespace();
        let mut cmd = match wrap.next() {
            Some(tool) => {
                let mut c = Command::new(tool);
                c.args(wrap).arg(php_fpm_bin()?);
                c
            }
            None => Command::new(php_fpm_bin()?),
        };
        cmd.arg("--nodaemonize")
            .arg("--fpm-config")
            .arg(&cfg)
            .arg("--allow-to-run-as-root");
        for setting in &opts.fpm_ini {
            cmd.arg("-d").arg(setting);
        }
        if opts.extension {
            cmd.arg("-d").arg(format!(
                "extension={}",
                artifact("libsonde_php.so")?.display()
            ));
        }
        let p = Proc::start("php-fpm", cmd, self.path("php-fpm.log"))?;
        self.procs.push(p);
        self.wait_alive("php-fpm", move || port_open(fpm_port))
    }

    fn start_nginx(&mut self, access_log: bool) -> Result<()> {
        let access = if access_log {
            format!(
                "log_format ledger '$request_id $status $request_uri';\n  \
                 access_log {}/access.log ledger;",
                self.dir.path().display()
            )
        } else {
            "access_log off;".to_owned()
        };
        let app = repo_root().join("demo/app");
        let dir = self.dir.path().display().to_string();
        let cfg = self.path("nginx.conf");
        fs::write(
            &cfg,
            format!(
                "worker_processes 1;\npid {dir}/nginx.pid;\nerror_log {dir}/nginx-error.log warn;\n\
                 daemon off;\nuser root;\nevents {{ worker_connections 256; }}\n\
                 http {{\n  {access}\n  client_body_temp_path {dir}/nginx-body;\n\
                 proxy_temp_path {dir}/nginx-proxy;\n  fastcgi_temp_path {dir}/nginx-fastcgi;\n\
                 uwsgi_temp_path {dir}/nginx-uwsgi;\n  scgi_temp_path {dir}/nginx-scgi;\n\
                 server {{\n    listen 127.0.0.1:{web};\n    root {app};\n\
                 location = /ping {{ return 204; }}\n\
                 location = /fpm-status {{\n      include /etc/nginx/fastcgi_params;\n\
                 fastcgi_param SCRIPT_NAME /fpm-status;\n\
                 fastcgi_param SCRIPT_FILENAME /fpm-status;\n\
                 fastcgi_pass 127.0.0.1:{fpm};\n    }}\n\
                 location ~ ^/t/([a-z0-9_]+\\.php)$ {{\n      include /etc/nginx/fastcgi_params;\n\
                 fastcgi_param SCRIPT_FILENAME {tests_php}/$1;\n\
                 fastcgi_pass 127.0.0.1:{fpm};\n    }}\n\
                 location / {{\n      include /etc/nginx/fastcgi_params;\n\
                 fastcgi_param SCRIPT_FILENAME {app}/index.php;\n\
                 fastcgi_param SCRIPT_NAME /index.php;\n\
                 fastcgi_pass 127.0.0.1:{fpm};\n    }}\n  }}\n}}\n",
                web = self.web_port,
                app = app.display(),
                fpm = self.fpm_port,
                tests_php = repo_root().join("tests/php").display(),
            ),
        )?;
        let mut cmd = Command::new("nginx");
        cmd.arg("-c").arg(&cfg).arg("-p").arg(self.dir.path());
        let p = Proc::start("nginx", cmd, self.path("nginx.log"))?;
        self.procs.push(p);
        let port = self.web_port;
        self.wait_alive("nginx", move || port_open(port))
    }

    /// Waits for `ready`, failing early (with the log) if the last started
    /// process exits.
    fn wait_alive(&mut self, name: &str, mut ready: impl FnMut() -> bool) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if ready() {
                return Ok(());
            }
            let p = self.procs.last_mut().expect("a process was started");
            if !p.alive() {
                bail!("{name} exited during start-up; its log:\n{}", p.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = self.procs.last().map(Proc::log_text).unwrap_or_default();
        bail!("{name} did not become ready within 30 s; its log:\n{log}")
    }

    /// The named process.
    pub fn proc(&mut self, name: &str) -> Option<&mut Proc> {
        self.procs.iter_mut().find(|p| p.name == name)
    }

    /// GET/POST through nginx.
    pub fn web(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Result<http::Response> {
        http::request(self.web_port, method, path_and_query, headers, body)
    }

    /// A JSON API call to the collector.
    pub fn api(&self, path_and_query: &str) -> Result<serde_json::Value> {
        let r = http::request(self.http_port, "GET", path_and_query, &[], "")?;
        if r.status != 200 {
            bail!("GET {path_and_query}: status {} body {}", r.status, r.body);
        }
        serde_json::from_str(&r.body)
            .with_context(|| format!("GET {path_and_query}: not JSON: {}", r.body))
    }

    /// Transactions the collector holds that ended since `from_ms` (0 while
    /// its API does not answer).
    pub fn stored_since(&self, from_ms: i64) -> u64 {
        let to = now_ms() + 60_000;
        self.api(&format!(
            "/api/v1/transactions?from={from_ms}&to={to}&limit=200000"
        ))
        .map(|v| v["transactions"].as_array().map_or(0, |a| a.len() as u64))
        .unwrap_or(0)
    }

    /// Records dropped and counted: by the extensions (carried in their next
    /// record) and by the first agent itself.
    pub fn dropped_total(&self) -> u64 {
        self.agent_metric("sonde_agent_ext_records_dropped_total")
            .unwrap_or(0)
            + self
                .agent_metric("sonde_agent_records_dropped_total")
                .unwrap_or(0)
    }

    /// A counter from the first agent's `/metrics` (summed over labels).
    pub fn agent_metric(&self, name: &str) -> Result<u64> {
        let r = http::request(self.agent_metrics_port, "GET", "/metrics", &[], "")?;
        Ok(r.body
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.split(['{', ' ']).next() == Some(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum())
    }

    /// The collector's agent list (`GET /api/v1/agents`), empty while it
    /// does not answer.
    pub fn agents(&self) -> Vec<serde_json::Value> {
        self.api("/api/v1/agents")
            .ok()
            .and_then(|v| v["agents"].as_array().cloned())
            .unwrap_or_default()
    }

    /// `result`, or its error followed by the last `chars` characters of
    /// the stack's logs.
    pub fn with_logs<T>(&self, result: Result<T>, chars: usize) -> Result<T> {
        result.map_err(|e| {
            let logs = self.logs();
            let tail: String = logs
                .chars()
                .skip(logs.chars().count().saturating_sub(chars))
                .collect();
            anyhow::anyhow!("{e:#}\n{tail}")
        })
    }

    /// Every log of the stack, for a failure message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        if let Ok(rd) = fs::read_dir(self.dir.path()) {
            let mut paths: Vec<_> = rd
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "log"))
                .collect();
            paths.sort();
            for p in paths {
                out.push_str(&format!(
                    "==> {} <==\n{}\n",
                    p.display(),
                    fs::read_to_string(&p).unwrap_or_default()
                ));
            }
        }
        out
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // Stop in reverse start order.
        while let Some(p) = self.procs.pop() {
            drop(p);
        }
    }
}

/// Test certificates made with the `openssl` command (installed by
/// scripts/install-deps.sh): nothing is committed, nothing outlives a test.
pub mod certs {
    use std::fs;
    use std::path::Path;
    use std::process::Command;

    use anyhow::{ensure, Context, Result};

    /// Runs `openssl ARGS` in `dir`; its standard output.
    pub fn openssl(dir: &Path, args: &[&str]) -> Result<Vec<u8>> {
        let out = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .context("run openssl")?;
        ensure!(
            out.status.success(),
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(out.stdout)
    }

    /// A CA (`<name>-ca.pem/.key`) and, signed by it, `<leaf>.pem/.key` for each
    /// `(leaf, extensions)`.
    pub fn pki(dir: &Path, name: &str, leaves: &[(&str, &str)]) -> Result<()> {
        let (ca_key, ca_pem) = (format!("{name}-ca.key"), format!("{name}-ca.pem"));
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &ca_key,
                "-out",
                &ca_pem,
                "-days",
                "2",
                "-subj",
                &format!("/CN=Sonde test {name} CA"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        )?;
        for (leaf, ext) in leaves {
            let ext_file = format!("{leaf}.ext");
            fs::write(
                dir.join(&ext_file),
                format!(
                    "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n{ext}\n"
                ),
            )?;
            openssl(
                dir,
                &[
                    "req",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-keyout",
                    &format!("{leaf}.key"),
                    "-out",
                    &format!("{leaf}.csr"),
                    "-subj",
                    &format!("/CN={leaf}"),
                ],
            )?;
            openssl(
                dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &format!("{leaf}.csr"),
                    "-CA",
                    &ca_pem,
                    "-CAkey",
                    &ca_key,
                    "-CAcreateserial",
                    "-out",
                    &format!("{leaf}.pem"),
                    "-days",
                    "2",
                    "-extfile",
                    &ext_file,
                ],
            )?;
        }
        Ok(())
    }
}

/// An independent ledger of requests: each tagged `ledger=<tag>` in its
/// query, nginx's access log (`StackOptions::access_log`) for what was
/// served, the collector's transactions for what was stored.
pub mod ledger {
    use std::collections::HashMap;
    use std::time::Duration;

    use anyhow::{anyhow, Result};

    use super::{now_ms, wait_for, Stack};

    /// The `ledger=` tag in a URL or a log line.
    pub fn tag_of(s: &str) -> Option<&str> {
        let at = s.find("ledger=")? + "ledger=".len();
        Some(s[at..].split(['&', ' ']).next().unwrap_or(""))
    }

    /// Tags nginx served with 200, from its access log.
    pub fn served(stack: &Stack) -> Vec<String> {
        std::fs::read_to_string(stack.path("access.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.split(' ').nth(1) == Some("200"))
            .filter_map(|l| tag_of(l).map(str::to_owned))
            .collect()
    }

    /// How many times the collector stored each tag (transactions ending
    /// since `from`; the traffic must fit one unsampled answer).
    pub fn stored(stack: &Stack, from: i64) -> HashMap<String, u32> {
        let mut out = HashMap::new();
        if let Ok(v) = stack.api(&format!(
            "/api/v1/transactions?from={from}&to={}&limit=200000&with_url=true",
            now_ms() + 60_000
        )) {
            assert_eq!(v["sampled"], false, "the test's traffic fits the limit");
            for t in v["transactions"].as_array().into_iter().flatten() {
                if let Some(tag) = t["url"].as_str().and_then(tag_of) {
                    *out.entry(tag.to_owned()).or_insert(0) += 1;
                }
            }
        }
        out
    }

    /// Waits up to `timeout` until the collector has stored every tag in
    /// `served` (transactions ending since `from`, polled through
    /// [`stored`]). Only that each is there: a test checking "exactly
    /// once" looks at the counts afterwards, when late duplicates have had
    /// time to arrive. On timeout the error says how many of the served
    /// requests were still missing at the last look.
    ///
    /// Panics as [`stored`] does when the collector's answer was sampled.
    pub fn wait_all_stored(
        stack: &Stack,
        served: &[String],
        from: i64,
        timeout: Duration,
    ) -> Result<()> {
        let mut last = HashMap::new();
        wait_for("every served request stored", timeout, || {
            last = stored(stack, from);
            served.iter().all(|t| last.contains_key(t))
        })
        .map_err(|e| {
            let missing = served.iter().filter(|t| !last.contains_key(*t)).count();
            anyhow!("{e}: {missing} of {} served requests missing", served.len())
        })
    }
}
