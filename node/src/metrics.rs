//! What a node exports at `/metrics`: its counters, gauges and histograms in the OpenMetrics
//! text format that Prometheus scrapes (docs/metrics.md lists every family).
//!
//! The actors that do the work count into one [`Metrics`] as it happens (runs, notifications,
//! the MySQL sink, the executor's queue); what is a reading of the moment (Raft, the mesh, the
//! process) is read when a scrape comes ([`Live`], and the collectors below).
//!
//! *Label cardinality is bounded:* a task is labelled by its name, and at most
//! [`MAX_TASK_NAMES`] names get series of their own per start of the node; runs of any further
//! task count under the name [`OTHER_TASKS`]. Every other label takes values from a fixed set
//! (outcomes, trigger kinds, channel kinds).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::consensus::RaftFigures;
use crate::mesh::Traffic;
use crate::model::Run;

/// The media type of what [`Metrics::render`] writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Distinct task names that get series of their own, per start of the node.
pub const MAX_TASK_NAMES: usize = 1000;
/// The `task` label of the runs of tasks beyond [`MAX_TASK_NAMES`].
pub const OTHER_TASKS: &str = "_other";

/// Upper bounds of the run-duration buckets, in seconds: 10 ms to 3 hours.
const DURATION_BUCKETS: [f64; 14] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 10800.0,
];
/// Upper bounds of the cron-lateness buckets, in seconds: 5 ms to 5 minutes.
const LATENESS_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 300.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    task: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StartLabels {
    task: String,
    trigger: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    task: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NotifyLabels {
    kind: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    node: String,
    version: String,
}

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

fn lateness_histogram() -> Histogram {
    Histogram::new(LATENESS_BUCKETS)
}

/// A node's metrics. One per node, shared (`Arc`) by the actors that count into it.
pub struct Metrics {
    registry: Registry,
    /// The task names that have series of their own.
    task_names: Mutex<HashSet<String>>,
    runs_started: Family<StartLabels, Counter>,
    runs_finished: Family<OutcomeLabels, Counter>,
    run_duration: Family<TaskLabels, Histogram, fn() -> Histogram>,
    cron_lateness: Family<TaskLabels, Histogram, fn() -> Histogram>,
    queue_length: Gauge,
    slots: Gauge,
    slots_free: Gauge,
    notifications: Family<NotifyLabels, Counter>,
    sink_delivered: Counter,
    sink_failures: Counter,
    sink_pending: Gauge,
    sink_failing: Gauge,
    node_info: Family<NodeLabels, Gauge>,
    raft_term: Gauge,
    raft_leader: Gauge,
    raft_has_leader: Gauge,
    raft_last_log: Gauge,
    raft_committed: Gauge,
    raft_applied: Gauge,
    raft_apply_lag: Gauge,
    mesh_up: Gauge,
    mesh_peers: Gauge,
    drained: Gauge,
    cron_paused: Gauge,
    traffic: Arc<Traffic>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// The readings of the moment that a scrape exports (gathered by the node handle).
#[derive(Debug, Clone, Default)]
pub struct Live {
    /// This node's name, for `taskmesh_node_info`.
    pub node: String,
    /// `None` while the node has no Raft instance to read.
    pub raft: Option<RaftFigures>,
    /// Whether the p2p endpoint runs.
    pub mesh_up: bool,
    /// Live peers (this node not counted).
    pub peers: usize,
    /// Whether an operator drained this node.
    pub drained: bool,
    /// Whether cron is paused.
    pub cron_paused: bool,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let runs_started = Family::<StartLabels, Counter>::default();
        registry.register(
            "taskmesh_runs_started",
            "Runs this node's executor started, by task name (the first 1000 names; later ones as `_other`) and trigger kind",
            runs_started.clone(),
        );
        let runs_finished = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "taskmesh_runs_finished",
            "Runs this node's executor ran to their end, by task name (the first 1000 names; later ones as `_other`) and outcome (succeeded, failed, timed_out, killed, lost)",
            runs_finished.clone(),
        );
        let run_duration = Family::new_with_constructor(duration_histogram as fn() -> Histogram);
        registry.register(
            "taskmesh_run_duration_seconds",
            "How long the runs this node ran took, from their process's start to their end, by task name",
            run_duration.clone(),
        );
        let cron_lateness = Family::new_with_constructor(lateness_histogram as fn() -> Histogram);
        registry.register(
            "taskmesh_cron_lateness_seconds",
            "How late after its cron slot a scheduled run's process started on this node, by task name",
            cron_lateness.clone(),
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let gauge = Gauge::default();
            registry.register(name, help, gauge.clone());
            gauge
        };
        let queue_length = gauge(
            &mut registry,
            "taskmesh_queue_length",
            "Runs on this node waiting for a free slot",
        );
        let slots = gauge(
            &mut registry,
            "taskmesh_slots",
            "Runs this node runs at once (node.slots; always-tasks take none)",
        );
        let slots_free = gauge(
            &mut registry,
            "taskmesh_slots_free",
            "Slots on this node not taken by a run",
        );
        let notifications = Family::<NotifyLabels, Counter>::default();
        registry.register(
            "taskmesh_notifications",
            "Notifications of exit-code rules this node sent, by channel kind (telegram, slack, webhook; none for a channel no longer in the settings) and result (delivered, failed)",
            notifications.clone(),
        );
        // Every kind and result from the start, so that a rate is 0 before the first one.
        for kind in ["telegram", "slack", "webhook"] {
            for result in ["delivered", "failed"] {
                let _ = notifications.get_or_create(&NotifyLabels {
                    kind: kind.into(),
                    result: result.into(),
                });
            }
        }
        let sink_delivered = Counter::default();
        registry.register(
            "taskmesh_sink_delivered_runs",
            "Run records this node's MySQL sink wrote to MySQL",
            sink_delivered.clone(),
        );
        let sink_failures = Counter::default();
        registry.register(
            "taskmesh_sink_failures",
            "Attempts of this node's MySQL sink that failed (the runs stay in the outbox and are retried)",
            sink_failures.clone(),
        );
        let sink_pending = gauge(
            &mut registry,
            "taskmesh_sink_pending_runs",
            "Run records waiting in this node's MySQL outbox",
        );
        let sink_failing = gauge(
            &mut registry,
            "taskmesh_sink_failing",
            "1 while this node's MySQL sink fails to deliver, else 0",
        );
        let node_info = Family::<NodeLabels, Gauge>::default();
        registry.register(
            "taskmesh_node_info",
            "Always 1: this node's name and version as labels",
            node_info.clone(),
        );
        let raft_term = gauge(&mut registry, "taskmesh_raft_term", "This node's Raft term");
        let raft_leader = gauge(
            &mut registry,
            "taskmesh_raft_is_leader",
            "1 while this node is the Raft leader, else 0",
        );
        let raft_has_leader = gauge(
            &mut registry,
            "taskmesh_raft_has_leader",
            "1 while this node knows a Raft leader (itself or another), else 0",
        );
        let raft_last_log = gauge(
            &mut registry,
            "taskmesh_raft_last_log_index",
            "Index of the newest entry in this node's Raft log",
        );
        let raft_committed = gauge(
            &mut registry,
            "taskmesh_raft_commit_index",
            "Index of the newest Raft entry this node knows to be committed",
        );
        let raft_applied = gauge(
            &mut registry,
            "taskmesh_raft_applied_index",
            "Index of the newest Raft entry this node's state has applied",
        );
        let raft_apply_lag = gauge(
            &mut registry,
            "taskmesh_raft_apply_lag",
            "Committed Raft entries this node has not applied yet",
        );
        let mesh_up = gauge(
            &mut registry,
            "taskmesh_mesh_up",
            "1 while this node's p2p endpoint runs, else 0",
        );
        let mesh_peers = gauge(
            &mut registry,
            "taskmesh_mesh_peers",
            "Live peers this node sees in the mesh (itself not counted)",
        );
        let drained = gauge(
            &mut registry,
            "taskmesh_drained",
            "1 while an operator has this node drained (no new run is placed on it), else 0",
        );
        let cron_paused = gauge(
            &mut registry,
            "taskmesh_cron_paused",
            "1 while an operator has cron paused for the cluster (no cron slot fires), else 0",
        );
        let traffic = Arc::new(Traffic::default());
        registry.register_collector(Box::new(TrafficCollector(traffic.clone())));
        registry.register_collector(Box::new(ProcessCollector));
        Self {
            registry,
            task_names: Mutex::default(),
            runs_started,
            runs_finished,
            run_duration,
            cron_lateness,
            queue_length,
            slots,
            slots_free,
            notifications,
            sink_delivered,
            sink_failures,
            sink_pending,
            sink_failing,
            node_info,
            raft_term,
            raft_leader,
            raft_has_leader,
            raft_last_log,
            raft_committed,
            raft_applied,
            raft_apply_lag,
            mesh_up,
            mesh_peers,
            drained,
            cron_paused,
            traffic,
        }
    }

    /// Where the mesh endpoints count their bytes (`taskmesh_mesh_bytes_total`).
    pub fn traffic(&self) -> Arc<Traffic> {
        self.traffic.clone()
    }

    /// The `task` label for `name`: the name itself while fewer than [`MAX_TASK_NAMES`] names
    /// have series, else [`OTHER_TASKS`].
    fn task_label(&self, name: &str) -> String {
        let mut names = self.task_names.lock().expect("metrics lock");
        if names.contains(name) {
            return name.to_owned();
        }
        if names.len() >= MAX_TASK_NAMES {
            return OTHER_TASKS.to_owned();
        }
        names.insert(name.to_owned());
        name.to_owned()
    }

    /// The executor started `run`'s process (at `now`).
    pub fn run_started(&self, run: &Run, now: chrono::DateTime<chrono::Utc>) {
        let task = self.task_label(&run.task_name);
        self.runs_started
            .get_or_create(&StartLabels {
                task: task.clone(),
                trigger: run.trigger.kind().to_owned(),
            })
            .inc();
        if let crate::model::Trigger::Cron { slot } = run.trigger {
            let late = (now - slot).num_microseconds().unwrap_or(i64::MAX).max(0);
            self.cron_lateness
                .get_or_create(&TaskLabels { task })
                .observe(late as f64 / 1e6);
        }
    }

    /// `run` ended on this node (its status is final).
    pub fn run_finished(&self, run: &Run) {
        let task = self.task_label(&run.task_name);
        self.runs_finished
            .get_or_create(&OutcomeLabels {
                task: task.clone(),
                outcome: run.status.as_str().to_owned(),
            })
            .inc();
        if let (Some(start), Some(end)) = (run.started_at, run.ended_at) {
            let took = (end - start).num_microseconds().unwrap_or(i64::MAX).max(0);
            self.run_duration
                .get_or_create(&TaskLabels { task })
                .observe(took as f64 / 1e6);
        }
    }

    /// The executor's queue and slots now.
    pub fn queue(&self, queued: usize, slots: u32, busy: u32) {
        self.queue_length.set(queued as i64);
        self.slots.set(i64::from(slots));
        self.slots_free.set(i64::from(slots.saturating_sub(busy)));
    }

    /// A notification to a channel of `kind` ended: delivered or not.
    pub fn notification(&self, kind: &str, delivered: bool) {
        let result = if delivered { "delivered" } else { "failed" };
        self.notifications
            .get_or_create(&NotifyLabels {
                kind: kind.to_owned(),
                result: result.to_owned(),
            })
            .inc();
    }

    /// The MySQL sink wrote `runs` run records.
    pub fn sink_delivered(&self, runs: u64) {
        self.sink_delivered.inc_by(runs);
    }

    /// An attempt of the MySQL sink failed.
    pub fn sink_failed(&self) {
        self.sink_failures.inc();
    }

    /// The MySQL sink's outbox and state now.
    pub fn sink_state(&self, pending: u64, failing: bool) {
        self.sink_pending
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
        self.sink_failing.set(i64::from(failing));
    }

    /// Every family in the text format, with the readings of the moment from `live`.
    pub fn render(&self, live: &Live) -> String {
        // One series: a renamed node's old name goes.
        self.node_info.clear();
        self.node_info
            .get_or_create(&NodeLabels {
                node: live.node.clone(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
            })
            .set(1);
        let index = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let raft = live.raft.unwrap_or_default();
        self.raft_term.set(index(raft.term));
        self.raft_leader.set(i64::from(raft.leader));
        self.raft_has_leader.set(i64::from(raft.has_leader));
        self.raft_last_log.set(index(raft.last_log));
        self.raft_committed.set(index(raft.committed));
        self.raft_applied.set(index(raft.applied));
        self.raft_apply_lag
            .set(index(raft.committed.saturating_sub(raft.applied)));
        self.mesh_up.set(i64::from(live.mesh_up));
        self.mesh_peers.set(live.peers as i64);
        self.drained.set(i64::from(live.drained));
        self.cron_paused.set(i64::from(live.cron_paused));
        let mut text = String::with_capacity(16 * 1024);
        // Writing to a String cannot fail; an encoder error would be a bug in a collector.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::warn!(error = %e, "encoding the metrics failed");
        }
        text
    }
}

/// `taskmesh_mesh_bytes_total`: the mesh's byte counts, read at each scrape.
#[derive(Debug)]
struct TrafficCollector(Arc<Traffic>);

impl Collector for TrafficCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let totals = self.0.totals();
        let counter = ConstCounter::new(0u64);
        let mut family = encoder.encode_descriptor(
            "taskmesh_mesh_bytes",
            "Bytes this node's p2p endpoints sent and received since start: request frames (kind rpc) and gossip payloads (kind gossip), without the encryption and multiplexing around them",
            None,
            counter.metric_type(),
        )?;
        for (kind, direction, value) in [
            ("rpc", "out", totals.rpc_sent),
            ("rpc", "in", totals.rpc_received),
            ("gossip", "out", totals.gossip_sent),
            ("gossip", "in", totals.gossip_received),
        ] {
            let labels = [("kind", kind), ("direction", direction)];
            ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// The process's own figures, as Prometheus's client libraries name them, read from
/// `/proc/self` (Linux) and `getrusage` at each scrape. Where a figure cannot be read, its
/// family is left out.
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let figures = ProcessFigures::read();
        if let Some(cpu) = figures.cpu_seconds {
            let counter = ConstCounter::new(cpu);
            counter.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "User and system CPU time the node's process spent, in seconds",
                None,
                counter.metric_type(),
            )?)?;
        }
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory of the node's process, in bytes",
                figures.resident_bytes,
            ),
            (
                "process_open_fds",
                "File descriptors the node's process has open",
                figures.open_fds,
            ),
            (
                "process_max_fds",
                "The node's limit of open file descriptors (soft limit)",
                figures.max_fds,
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(value) = value {
                let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
                gauge.encode(encoder.encode_descriptor(
                    name,
                    help,
                    None,
                    gauge.metric_type(),
                )?)?;
            }
        }
        Ok(())
    }
}

/// One reading of the process's figures.
#[derive(Debug, Default, Clone, PartialEq)]
struct ProcessFigures {
    cpu_seconds: Option<f64>,
    resident_bytes: Option<u64>,
    open_fds: Option<u64>,
    max_fds: Option<u64>,
}

impl ProcessFigures {
    fn read() -> Self {
        use nix::sys::resource::{Resource, UsageWho, getrlimit, getrusage};
        let cpu_seconds = getrusage(UsageWho::RUSAGE_SELF).ok().map(|usage| {
            let seconds = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
            seconds(usage.user_time()) + seconds(usage.system_time())
        });
        let resident_bytes = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| resident_from_status(&status));
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|entries| entries.count() as u64);
        let max_fds = getrlimit(Resource::RLIMIT_NOFILE)
            .ok()
            .map(|(soft, _hard)| soft);
        Self {
            cpu_seconds,
            resident_bytes,
            open_fds,
            max_fds,
        }
    }
}

/// The resident set size from `/proc/<pid>/status` text (its `VmRSS:` line, in kB).
fn resident_from_status(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut words = line["VmRSS:".len()..].split_whitespace();
    let kilobytes: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => Some(kilobytes * 1024),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{RunStatus, TaskId, Trigger};

    fn run(task: &str, trigger: Trigger) -> Run {
        Run::new(
            TaskId(task.into()),
            task.into(),
            trigger,
            1,
            "node-a".into(),
        )
    }

    /// The value of the sample line `name{labels}` in `text`, if there is one.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn runs_are_counted_by_task_trigger_and_outcome() {
        let metrics = Metrics::new();
        let now = chrono::Utc::now();
        let mut a = run("backup", Trigger::Manual);
        metrics.run_started(&a, now);
        a.started_at = Some(now);
        a.close(
            RunStatus::Succeeded,
            "exit 0".into(),
            now + chrono::Duration::milliseconds(300),
        );
        metrics.run_finished(&a);
        let slot = now - chrono::Duration::milliseconds(40);
        metrics.run_started(&run("backup", Trigger::Cron { slot }), now);
        let text = metrics.render(&Live::default());
        assert_eq!(
            sample(
                &text,
                r#"taskmesh_runs_started_total{task="backup",trigger="manual"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"taskmesh_runs_started_total{task="backup",trigger="cron"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"taskmesh_runs_finished_total{task="backup",outcome="succeeded"}"#
            ),
            Some(1.0)
        );
        // 0.3 s falls in the 0.5 s bucket, not the 0.25 s one.
        assert_eq!(
            sample(
                &text,
                r#"taskmesh_run_duration_seconds_bucket{le="0.25",task="backup"}"#
            ),
            Some(0.0),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                r#"taskmesh_run_duration_seconds_bucket{le="0.5",task="backup"}"#
            ),
            Some(1.0)
        );
        // 40 ms late: in the 50 ms bucket, not the 25 ms one.
        assert_eq!(
            sample(
                &text,
                r#"taskmesh_cron_lateness_seconds_bucket{le="0.025",task="backup"}"#
            ),
            Some(0.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"taskmesh_cron_lateness_seconds_bucket{le="0.05",task="backup"}"#
            ),
            Some(1.0)
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn task_names_beyond_the_bound_share_one_label() {
        let metrics = Metrics::new();
        let now = chrono::Utc::now();
        for i in 0..MAX_TASK_NAMES + 5 {
            metrics.run_started(&run(&format!("t{i}"), Trigger::Manual), now);
        }
        let text = metrics.render(&Live::default());
        let series = text
            .lines()
            .filter(|l| l.starts_with("taskmesh_runs_started_total{"))
            .count();
        assert_eq!(series, MAX_TASK_NAMES + 1);
        assert_eq!(
            sample(
                &text,
                r#"taskmesh_runs_started_total{task="_other",trigger="manual"}"#
            ),
            Some(5.0)
        );
        // A name that has its series keeps it.
        metrics.run_started(&run("t0", Trigger::Manual), now);
        let text = metrics.render(&Live::default());
        assert_eq!(
            sample(
                &text,
                r#"taskmesh_runs_started_total{task="t0",trigger="manual"}"#
            ),
            Some(2.0)
        );
    }

    #[test]
    fn live_readings_queue_sink_and_traffic_are_exported() {
        let metrics = Metrics::new();
        metrics.queue(3, 8, 6);
        metrics.sink_delivered(4);
        metrics.sink_failed();
        metrics.sink_state(7, true);
        metrics.notification("telegram", true);
        metrics.traffic().rpc_sent(100);
        let text = metrics.render(&Live {
            node: "node-a".into(),
            raft: Some(RaftFigures {
                term: 5,
                leader: true,
                has_leader: true,
                last_log: 12,
                committed: 11,
                applied: 9,
            }),
            mesh_up: true,
            peers: 2,
            drained: true,
            cron_paused: false,
        });
        for (series, value) in [
            ("taskmesh_queue_length", 3.0),
            ("taskmesh_slots", 8.0),
            ("taskmesh_slots_free", 2.0),
            ("taskmesh_sink_delivered_runs_total", 4.0),
            ("taskmesh_sink_failures_total", 1.0),
            ("taskmesh_sink_pending_runs", 7.0),
            ("taskmesh_sink_failing", 1.0),
            (
                r#"taskmesh_notifications_total{kind="telegram",result="delivered"}"#,
                1.0,
            ),
            ("taskmesh_drained", 1.0),
            ("taskmesh_cron_paused", 0.0),
            ("taskmesh_raft_term", 5.0),
            ("taskmesh_raft_is_leader", 1.0),
            ("taskmesh_raft_commit_index", 11.0),
            ("taskmesh_raft_applied_index", 9.0),
            ("taskmesh_raft_apply_lag", 2.0),
            ("taskmesh_mesh_peers", 2.0),
            (
                r#"taskmesh_mesh_bytes_total{kind="rpc",direction="out"}"#,
                100.0,
            ),
        ] {
            assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
        }
        let info = format!(
            r#"taskmesh_node_info{{node="node-a",version="{}"}}"#,
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(sample(&text, &info), Some(1.0), "{text}");
    }

    #[test]
    fn the_resident_size_is_read_from_the_status_text() {
        let status = "Name:\ttaskmesh\nVmPeak:\t  9000 kB\nVmRSS:\t   1234 kB\nThreads:\t4\n";
        assert_eq!(resident_from_status(status), Some(1234 * 1024));
        assert_eq!(resident_from_status("VmRSS:\t12 MB\n"), None);
        assert_eq!(resident_from_status("Name:\tx\n"), None);
        if cfg!(target_os = "linux") {
            let figures = ProcessFigures::read();
            assert!(figures.resident_bytes.is_some_and(|b| b > 0), "{figures:?}");
            assert!(figures.open_fds.is_some_and(|n| n > 0), "{figures:?}");
            assert!(figures.cpu_seconds.is_some(), "{figures:?}");
        }
    }

    #[test]
    fn the_grafana_dashboard_uses_only_exported_series() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/grafana/taskmesh.json");
        let dashboard = std::fs::read_to_string(&path).expect("dist/grafana/taskmesh.json");
        serde_json::from_str::<serde_json::Value>(&dashboard).expect("the dashboard is JSON");
        let metrics = Metrics::new();
        let now = chrono::Utc::now();
        let mut one = run("a", Trigger::Cron { slot: now });
        metrics.run_started(&one, now);
        one.started_at = Some(now);
        one.close(RunStatus::Succeeded, "exit 0".into(), now);
        metrics.run_finished(&one);
        metrics.notification("webhook", true);
        let text = metrics.render(&Live::default());
        // The sample names, and the families' own names (a histogram's, named in a description).
        let exported: HashSet<&str> = text
            .lines()
            .filter_map(|l| match l.strip_prefix("# TYPE ") {
                Some(family) => family.split(' ').next(),
                None if l.starts_with('#') => None,
                None => l.split(['{', ' ']).next(),
            })
            .collect();
        let mut used: Vec<&str> = dashboard
            .match_indices("taskmesh_")
            .chain(dashboard.match_indices("process_"))
            .map(|(at, _)| {
                let rest = &dashboard[at..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                &rest[..end]
            })
            .collect();
        used.sort();
        used.dedup();
        assert!(used.len() > 10, "{used:?}");
        let missing: Vec<&&str> = used.iter().filter(|n| !exported.contains(**n)).collect();
        assert!(
            missing.is_empty(),
            "the dashboard names series /metrics lacks: {missing:?}"
        );
    }
}
