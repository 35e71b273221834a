//! One agent's `Stream` call: hello, then batches (stored, then
//! acknowledged), heartbeats and live snapshots, until the agent closes the
//! stream, the store fails, or the collector shuts down.
//!
//! A reader task takes the agent's messages off the wire (decompressing and
//! decoding them) while the session stores the one before: decoding the
//! next batch overlaps storing the current one, on another core. At most
//! [`READ_AHEAD`] decoded messages wait, so a slow store still pushes back
//! on the agent through HTTP/2 flow control rather than piling up here.
//! Messages are handled in order, one at a time: a batch is committed and
//! its Ack queued before the next is looked at.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use sonde_proto::v1::agent_message::Msg;
use sonde_proto::v1::collector_message::Msg as Reply;
use sonde_proto::v1::{Ack, AgentMessage, Batch, CollectorMessage};
use tokio::sync::mpsc;
use tonic::{Status, Streaming};
use tracing::{debug, info, warn};

use super::{add, Ingest};
use crate::clock::now_ms;
use crate::storage::run_blocking;

/// Replies queued for the agent before the session waits for it to read
/// them. Acks are small and one per batch, so a few suffice.
pub const OUTBOUND_QUEUE: usize = 16;

/// Decoded agent messages waiting while the session stores the one
/// before (each can be a batch of thousands of records).
pub const READ_AHEAD: usize = 1;

type Outbound = mpsc::Sender<Result<CollectorMessage, Status>>;
type Inbound = Result<Option<AgentMessage>, Status>;

/// Reads the agent's messages ahead of the session, until the stream ends
/// or the session stops listening.
async fn read_ahead(mut inbound: Streaming<AgentMessage>, out: mpsc::Sender<Inbound>) {
    loop {
        let next = inbound.message().await;
        let last = !matches!(next, Ok(Some(_)));
        if out.send(next).await.is_err() || last {
            return;
        }
    }
}

pub struct Session {
    ingest: Ingest,
    peer: String,
    tx: Outbound,
    /// From the hello; empty until then.
    agent_id: String,
    /// The agent process's session, from the hello (empty: an older agent).
    session_id: String,
    /// Host of records that carry none: the agent's hostname, else the
    /// peer's IP address.
    hostname: String,
    /// Apps already known for this agent, so each is written once.
    apps: HashSet<String>,
}

/// Why a session ended early.
enum End {
    /// The agent went away or closed its side.
    Closed,
    /// Tell the agent, then stop.
    Error(Status),
}

impl Session {
    pub fn new(ingest: Ingest, peer: Option<SocketAddr>, tx: Outbound) -> Self {
        Session {
            ingest,
            peer: peer.map_or_else(|| "unknown".to_owned(), |a| a.to_string()),
            hostname: peer.map_or_else(|| "unknown".to_owned(), |a| a.ip().to_string()),
            tx,
            agent_id: String::new(),
            session_id: String::new(),
            apps: HashSet::new(),
        }
    }

    pub async fn run(mut self, inbound: Streaming<AgentMessage>) {
        let mut shutdown = self.ingest.shutdown.clone();
        let (ahead_tx, mut ahead) = mpsc::channel(READ_AHEAD);
        let reader = tokio::spawn(read_ahead(inbound, ahead_tx));
        let mut first = true;
        let end = loop {
            let next = tokio::select! {
                // Shutdown wins over a waiting message: the batch in hand
                // was already stored and acknowledged.
                biased;
                _ = shutdown.wait() => {
                    break End::Error(Status::unavailable("collector is shutting down"));
                }
                next = ahead.recv() => next.unwrap_or(Ok(None)),
            };
            let msg = match next {
                Ok(Some(AgentMessage { msg: Some(msg) })) => msg,
                Ok(Some(AgentMessage { msg: None })) => {
                    debug!(peer = %self.peer, "empty agent message ignored");
                    continue;
                }
                Ok(None) => break End::Closed,
                Err(status) => {
                    debug!(peer = %self.peer, %status, "agent stream broke");
                    break End::Closed;
                }
            };
            if first && !matches!(msg, Msg::Hello(_)) {
                warn!(peer = %self.peer, "stream did not start with a hello; accepting it anyway");
            }
            first = false;
            let result = match msg {
                Msg::Hello(hello) => {
                    self.hello(hello.agent_id, hello.session_id).await;
                    Ok(())
                }
                Msg::Batch(batch) => self.batch(batch).await,
                Msg::Heartbeat(hb) => {
                    self.seen().await;
                    if hb.ts_unix_ms > 0 {
                        self.clock(hb.ts_unix_ms);
                    }
                    if let Some(c) = hb.counters {
                        self.counters(c).await;
                    }
                    Ok(())
                }
                Msg::Live(snapshot) => {
                    if let Some(host) = &snapshot.host {
                        self.ingest
                            .stats
                            .host_metrics(host, &self.hostname, now_ms());
                    }
                    if !self.agent_id.is_empty() {
                        self.ingest
                            .live
                            .update(&self.agent_id, &self.hostname, snapshot, now_ms());
                    }
                    Ok(())
                }
            };
            if let Err(end) = result {
                break end;
            }
        };
        // A message read ahead but not handled is not acknowledged: the
        // agent sends it again.
        reader.abort();
        if let End::Error(status) = end {
            // The agent may already be gone; nothing more to do then.
            let _ = self.tx.send(Err(status)).await;
        }
        if !self.agent_id.is_empty() {
            self.ingest.live.remove(&self.agent_id);
            self.ingest
                .presence
                .stream_closed(&self.agent_id, &self.session_id, now_ms());
        }
        debug!(agent = %self.agent_id, peer = %self.peer, "stream ended");
    }

    async fn hello(&mut self, agent_id: String, session_id: String) {
        if agent_id.is_empty() {
            warn!(peer = %self.peer, "hello without an agent_id");
            return;
        }
        if !self.agent_id.is_empty() {
            warn!(agent = %self.agent_id, peer = %self.peer, "second hello on one stream ignored");
            return;
        }
        self.agent_id = agent_id.clone();
        self.session_id = session_id;
        self.ingest
            .presence
            .stream_opened(&self.agent_id, &self.session_id, now_ms());
        let now = now_ms();
        let found = run_blocking(&self.ingest.store, move |s| {
            s.heartbeat(&agent_id, now)?;
            s.agent(&agent_id)
        })
        .await;
        match found {
            Ok(Some(agent)) => {
                if !agent.identity.hostname.is_empty() {
                    self.hostname = agent.identity.hostname;
                }
                self.apps = agent.apps.into_iter().collect();
            }
            Ok(None) => {
                warn!(agent = %self.agent_id, peer = %self.peer, "stream from an agent that has not registered")
            }
            Err(error) => {
                warn!(%error, agent = %self.agent_id, peer = %self.peer, "looking up agent failed")
            }
        }
        info!(agent = %self.agent_id, peer = %self.peer, "agent stream open");
    }

    /// Measures the agent's clock against ours from its heartbeat's send
    /// time (one-way: the network delay counts as skew, milliseconds on a
    /// LAN), and warns when it crosses [`CLOCK_SKEW_WARN_MS`].
    fn clock(&self, agent_ms: i64) {
        if self.agent_id.is_empty() {
            return;
        }
        let skew = agent_ms - now_ms();
        if let Some(crossed) = self.ingest.presence.clock(&self.agent_id, skew) {
            if crossed {
                warn!(agent = %self.agent_id, host = %self.hostname, skew_ms = skew,
                    "the agent's clock is off: its transactions' times are shifted by as much");
            } else {
                info!(agent = %self.agent_id, host = %self.hostname, skew_ms = skew, "the agent's clock is back in line");
            }
        }
    }

    /// Keeps the agent's own counters for the API, and raises an event when
    /// it has lost records (spool full, queue full, …).
    async fn counters(&self, counters: sonde_proto::v1::AgentCounters) {
        if self.agent_id.is_empty() {
            return;
        }
        let by_reason: Vec<String> = counters
            .records_dropped_by_reason
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(r, n)| format!("{r} {n}"))
            .collect();
        let total = counters.records_dropped;
        let now = now_ms();
        let Some(new) = self.ingest.presence.report(&self.agent_id, counters, now) else {
            return;
        };
        warn!(agent = %self.agent_id, host = %self.hostname, new, total, "agent reports lost records");
        let event = crate::storage::EventRecord {
            ts_ms: now,
            level: "warning".into(),
            kind: "agent_dropped".into(),
            state: "firing".into(),
            message: format!(
                "agent {} on {} lost {new} records ({total} since it started: {})",
                self.agent_id,
                self.hostname,
                by_reason.join(", ")
            ),
            host: Some(self.hostname.clone()),
            rule: "agent_dropped".into(),
            value: new as f64,
            ..Default::default()
        };
        if let Err(error) = run_blocking(&self.ingest.store, move |s| s.insert_event(&event)).await
        {
            warn!(%error, agent = %self.agent_id, "storing the drop event failed");
        }
    }

    /// Records the agent as alive. Failures are logged, not fatal: the next
    /// heartbeat tries again.
    async fn seen(&self) {
        if self.agent_id.is_empty() {
            return;
        }
        let agent_id = self.agent_id.clone();
        let now = now_ms();
        if let Err(error) =
            run_blocking(&self.ingest.store, move |s| s.heartbeat(&agent_id, now)).await
        {
            warn!(%error, agent = %self.agent_id, "recording heartbeat failed");
        }
    }

    async fn batch(&mut self, batch: Batch) -> Result<(), End> {
        let counters = &self.ingest.counters;
        add(&counters.batches, 1);
        let batch_id = batch.batch_id;
        let count = batch.records.len();
        let new_apps: Vec<String> = batch
            .records
            .iter()
            .map(|r| r.app.as_str())
            .filter(|a| !a.is_empty() && !self.apps.contains(*a))
            .collect::<HashSet<_>>()
            .into_iter()
            .map(str::to_owned)
            .collect();
        let records = batch.records;
        let host_metrics = batch.host_metrics;
        let host = self.hostname.clone();
        // Host metrics are idempotent per (host, time), so storing them
        // after the records is safe: a failure gets the batch resent whole.
        let outcome = run_blocking(&self.ingest.store, move |s| {
            let outcome = s.insert_records(&records, &host)?;
            s.insert_host_metrics(&host_metrics, &host)?;
            Ok((outcome, records, host_metrics))
        })
        .await;
        let outcome = match outcome {
            Ok((o, records, host_metrics)) => {
                let now = now_ms();
                // Freshness: how long after its end the newest record of
                // the batch became durable.
                if let Some(newest) = records.iter().map(crate::storage::end_ms).max() {
                    counters
                        .lag_ms
                        .store(now.saturating_sub(newest).max(0), Ordering::Relaxed);
                }
                // The live view counts what was stored now. A batch with
                // duplicates is a resend or replay: rather than tell its
                // new records from the old, leave it out (the rollups have
                // it exactly). Done beside the next batch's storing, as is
                // freeing the records, rather than before it.
                let stats = self.ingest.stats.clone();
                let host = self.hostname.clone();
                let fresh = o.duplicates == 0 && o.stored > 0;
                tokio::spawn(async move {
                    if fresh {
                        stats.observe(&records, &host, now);
                    }
                    for m in &host_metrics {
                        stats.host_metrics(m, &host, now);
                    }
                });
                o
            }
            Err(error) => {
                add(&counters.store_errors, 1);
                warn!(%error, agent = %self.agent_id, peer = %self.peer, batch_id, "storing batch failed; ending the stream so the agent resends it");
                return Err(End::Error(Status::unavailable(
                    "storage unavailable; resend later",
                )));
            }
        };
        add(&counters.records_stored, outcome.stored.into());
        add(&counters.records_duplicate, outcome.duplicates.into());
        add(&counters.records_invalid, outcome.invalid.into());
        if outcome.invalid > 0 {
            warn!(agent = %self.agent_id, peer = %self.peer, batch_id, invalid = outcome.invalid, "records without a usable id were not stored");
        }
        debug!(agent = %self.agent_id, batch_id, count, stored = outcome.stored, duplicates = outcome.duplicates, replay = batch.replay, "batch stored");

        let ack = CollectorMessage {
            msg: Some(Reply::Ack(Ack {
                batch_id,
                stored: outcome.stored,
                duplicates: outcome.duplicates,
            })),
        };
        if self.tx.send(Ok(ack)).await.is_err() {
            // The agent is gone; it will resend and get duplicates.
            return Err(End::Closed);
        }

        if !new_apps.is_empty() && !self.agent_id.is_empty() {
            let agent_id = self.agent_id.clone();
            let apps = new_apps.clone();
            match run_blocking(&self.ingest.store, move |s| {
                s.add_agent_apps(&agent_id, &apps)
            })
            .await
            {
                Ok(()) => self.apps.extend(new_apps),
                Err(error) => warn!(%error, agent = %self.agent_id, "recording agent apps failed"),
            }
        }
        Ok(())
    }
}
