//! Host metrics: every `host_metrics_interval_secs`, one `HostMetrics` sample
//! of this machine (CPU total and per core, load, memory and swap, disk usage
//! and I/O per mount, network totals, process count) and of its php-fpm pools
//! (workers found by their process title `php-fpm: pool NAME`: how many, CPU
//! and RSS; active = those in a request now by the extension's scoreboard,
//! idle = the rest; with `fpm_status_urls`, php-fpm's own status page adds
//! the listen queue and max-children-reached and its own worker counts win).
//! Samples go to the sink, which sends them durably in batches and
//! the latest in live snapshots. Sampling reads /proc through `sysinfo` on a
//! blocking thread; it never touches the network and a failed read only
//! leaves a field at zero.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sonde_proto::v1::{DiskMetrics, FpmPoolMetrics, HostMetrics};
use sysinfo::{
    CpuRefreshKind, DiskRefreshKind, Disks, MemoryRefreshKind, Networks, ProcessRefreshKind,
    ProcessesToUpdate, System, UpdateKind,
};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::counters::{add, Counters};
use crate::live::LiveTable;
use crate::ratelimit::RateLimit;
use crate::shutdown::Shutdown;
use crate::sources::fpm_status::{self, PoolStatus};

/// Samples waiting for the sink; a sink busy for this long loses the oldest
/// view of the host, never records.
const CHANNEL_CAPACITY: usize = 16;

/// The process title php-fpm gives its workers: `php-fpm: pool www`.
const FPM_POOL_PREFIX: &str = "php-fpm: pool ";

/// The receiving side for the sink and the sampler to spawn.
pub fn channel() -> (mpsc::Sender<HostMetrics>, mpsc::Receiver<HostMetrics>) {
    mpsc::channel(CHANNEL_CAPACITY)
}

/// What the sampler keeps between samples (CPU and I/O rates need two reads).
pub struct Sampler {
    hostname: String,
    system: System,
    disks: Disks,
    networks: Networks,
}

impl Sampler {
    pub fn new(hostname: String) -> Sampler {
        let mut s = Sampler {
            hostname,
            system: System::new(),
            disks: Disks::new(),
            networks: Networks::new(),
        };
        // A first read, so the first sample has CPU and I/O rates.
        s.refresh();
        s
    }

    fn refresh(&mut self) {
        self.system
            .refresh_cpu_specifics(CpuRefreshKind::nothing().with_cpu_usage());
        self.system
            .refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram().with_swap());
        self.system.refresh_processes_specifics(
            ProcessesToUpdate::All,
            true,
            ProcessRefreshKind::nothing()
                .with_cpu()
                .with_memory()
                .with_cmd(UpdateKind::OnlyIfNotSet),
        );
        self.disks.refresh_specifics(
            true,
            DiskRefreshKind::nothing().with_storage().with_io_usage(),
        );
        self.networks.refresh(true);
    }

    /// Takes one sample now: `busy` are the worker pids in a request,
    /// `status` what pools' status pages said.
    pub fn sample(&mut self, busy: &HashSet<u32>, status: &[PoolStatus]) -> HostMetrics {
        self.refresh();
        let sys = &self.system;
        let load = System::load_average();
        let mut disks: Vec<DiskMetrics> = Vec::new();
        for d in self.disks.list() {
            let mount = d.mount_point().to_string_lossy().into_owned();
            // One entry per mount point (bind mounts repeat devices).
            if disks.iter().any(|m| m.mount == mount) {
                continue;
            }
            let usage = d.usage();
            disks.push(DiskMetrics {
                mount,
                total_bytes: d.total_space(),
                used_bytes: d.total_space().saturating_sub(d.available_space()),
                read_bytes: usage.total_read_bytes,
                written_bytes: usage.total_written_bytes,
            });
        }
        let (mut rx, mut tx) = (0u64, 0u64);
        for (name, data) in self.networks.list() {
            if name == "lo" {
                continue;
            }
            rx += data.total_received();
            tx += data.total_transmitted();
        }
        let processes = sys
            .processes()
            .iter()
            .filter(|(_, p)| p.thread_kind().is_none());
        let mut count = 0u32;
        let mut pools: BTreeMap<String, FpmPoolMetrics> = BTreeMap::new();
        for (pid, p) in processes {
            count += 1;
            let Some(title) = p.cmd().first().map(|a| a.to_string_lossy()) else {
                continue;
            };
            let Some(pool) = fpm_pool(&title) else {
                continue;
            };
            let m = pools
                .entry(pool.to_owned())
                .or_insert_with(|| FpmPoolMetrics {
                    pool: pool.to_owned(),
                    ..Default::default()
                });
            m.total += 1;
            if busy.contains(&pid.as_u32()) {
                m.active += 1;
            }
            m.cpu_percent += f64::from(p.cpu_usage());
            m.rss_bytes += p.memory();
        }
        for m in pools.values_mut() {
            m.idle = m.total.saturating_sub(m.active);
        }
        for s in status {
            let m = pools
                .entry(s.pool.clone())
                .or_insert_with(|| FpmPoolMetrics {
                    pool: s.pool.clone(),
                    ..Default::default()
                });
            m.listen_queue = s.listen_queue;
            m.max_children_reached = s.max_children_reached;
            // php-fpm knows its own workers (the page's request is one of
            // the active ones).
            m.active = s.active;
            m.idle = s.idle;
            m.total = s.total;
        }
        HostMetrics {
            ts_unix_ms: unix_millis(),
            hostname: self.hostname.clone(),
            cpu_percent: f64::from(sys.global_cpu_usage()),
            cpu_per_core: sys
                .cpus()
                .iter()
                .map(|c| f64::from(c.cpu_usage()))
                .collect(),
            load1: load.one,
            load5: load.five,
            load15: load.fifteen,
            mem_total_bytes: sys.total_memory(),
            mem_used_bytes: sys.used_memory(),
            swap_total_bytes: sys.total_swap(),
            swap_used_bytes: sys.used_swap(),
            disks,
            net_rx_bytes: rx,
            net_tx_bytes: tx,
            processes: count,
            fpm_pools: pools.into_values().collect(),
            db_connections: 0,
        }
    }
}

/// The pool name in a php-fpm worker's process title.
pub fn fpm_pool(title: &str) -> Option<&str> {
    let name = title.strip_prefix(FPM_POOL_PREFIX)?.trim();
    (!name.is_empty()).then_some(name)
}

fn unix_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Samples every `every` until shutdown. The first sample comes one period
/// after start (CPU percentages need a period to measure).
/// What the sampling task needs.
pub struct HostSource {
    pub hostname: String,
    pub every: Duration,
    pub tx: mpsc::Sender<HostMetrics>,
    pub counters: Arc<Counters>,
    /// Which workers are in a request (the scoreboard and the socket).
    pub live: Arc<LiveTable>,
    /// php-fpm status pages to read (`fpm_status_urls`).
    pub status_urls: Vec<String>,
}

pub async fn run(src: HostSource, mut shutdown: Shutdown) {
    let HostSource {
        hostname,
        every,
        tx,
        counters,
        live,
        status_urls,
    } = src;
    let status_log = RateLimit::new(Duration::from_secs(300));
    let sampler = tokio::task::spawn_blocking(move || Sampler::new(hostname)).await;
    let Ok(mut sampler) = sampler else {
        warn!("host metrics sampler failed to start; no host metrics");
        return;
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tick.tick() => {}
        }
        let mut status = Vec::with_capacity(status_urls.len());
        for url in &status_urls {
            match fpm_status::fetch(url).await {
                Ok(s) => status.push(s),
                Err(error) => {
                    if let Some(silenced) = status_log.check(std::time::Instant::now()) {
                        warn!(%url, %error, silenced, "php-fpm status page not read (fpm_status_urls)");
                    }
                }
            }
        }
        let busy = live.busy_pids();
        let db_connections = live.db_connections();
        let taken = tokio::task::spawn_blocking(move || {
            let mut m = sampler.sample(&busy, &status);
            m.db_connections = db_connections;
            (sampler, m)
        })
        .await;
        let Ok((s, m)) = taken else {
            warn!("host metrics sampling panicked; no more host metrics");
            return;
        };
        sampler = s;
        add(&counters.host_samples, 1);
        debug!(
            cpu_percent = m.cpu_percent,
            processes = m.processes,
            fpm_pools = m.fpm_pools.len(),
            "host metrics sample"
        );
        if tx.try_send(m).is_err() && tx.is_closed() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fpm_pool_titles() {
        assert_eq!(fpm_pool("php-fpm: pool www"), Some("www"));
        assert_eq!(fpm_pool("php-fpm: pool api "), Some("api"));
        assert_eq!(
            fpm_pool("php-fpm: master process (/etc/php/fpm.conf)"),
            None
        );
        assert_eq!(fpm_pool("php-fpm: pool "), None);
        assert_eq!(fpm_pool("nginx: worker process"), None);
    }

    #[test]
    fn a_sample_of_this_machine_is_plausible() {
        let mut s = Sampler::new("test-host".into());
        std::thread::sleep(Duration::from_millis(200));
        let m = s.sample(&HashSet::new(), &[]);
        assert_eq!(m.hostname, "test-host");
        assert!(m.ts_unix_ms > 1_600_000_000_000);
        assert!(!m.cpu_per_core.is_empty());
        assert!((0.0..=100.0 * m.cpu_per_core.len() as f64).contains(&m.cpu_percent));
        assert!(m.mem_total_bytes > 0 && m.mem_used_bytes <= m.mem_total_bytes);
        assert!(m.processes > 0, "at least this test");
        assert!(m.load1 >= 0.0);
        for d in &m.disks {
            assert!(d.used_bytes <= d.total_bytes, "{d:?}");
        }
        // A status page's numbers win for its pool, and add a pool that
        // has no worker seen here.
        let page = PoolStatus {
            pool: "sonde-test-pool".into(),
            listen_queue: 4,
            max_children_reached: 2,
            active: 3,
            idle: 1,
            total: 4,
        };
        let m = s.sample(&HashSet::new(), std::slice::from_ref(&page));
        let p = m.fpm_pools.iter().find(|p| p.pool == page.pool).unwrap();
        assert_eq!(
            (
                p.active,
                p.idle,
                p.total,
                p.listen_queue,
                p.max_children_reached
            ),
            (3, 1, 4, 4, 2)
        );
    }
}
