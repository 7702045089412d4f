//! `Stats` in the Prometheus text exposition format (version 0.0.4), written by
//! hand: no dependency, so it is always there, not behind a feature.
//!
//! Every metric is named `shardstone_…`; each family gets one `# HELP` and one
//! `# TYPE` line, then all its samples together, as the format requires.
//! Monotonic counts since the engine opened are counters (`_total`); everything
//! else is a gauge. Durations are in seconds, sizes in bytes. Per-command series
//! carry a `command` label, per-consumer series a `consumer` label (an unnamed
//! consumer is `(unnamed N)`, N counting the unnamed ones in `Stats::feed`
//! order), hot pages a `page` label. Keys never become labels: hot keys are in
//! `Stats::hot_keys` only.

use super::stats::Stats;
use std::fmt::Write;

/// A sample's value: counts stay exact integers.
#[derive(Clone, Copy)]
enum Num {
    Int(u64),
    Float(f64),
}

impl From<u64> for Num {
    fn from(v: u64) -> Num {
        Num::Int(v)
    }
}

impl From<usize> for Num {
    fn from(v: usize) -> Num {
        Num::Int(v as u64)
    }
}

impl From<bool> for Num {
    fn from(v: bool) -> Num {
        Num::Int(u64::from(v))
    }
}

impl From<f64> for Num {
    fn from(v: f64) -> Num {
        Num::Float(v)
    }
}

impl From<std::time::Duration> for Num {
    fn from(v: std::time::Duration) -> Num {
        Num::Float(v.as_secs_f64())
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

/// The text being written.
struct Exposition {
    out: String,
}

impl Exposition {
    /// One metric family: its HELP and TYPE lines, then `samples`, each with at
    /// most one label.
    fn family<L: AsRef<str>>(
        &mut self,
        name: &str,
        kind: Kind,
        help: &str,
        samples: impl IntoIterator<Item = (Option<(&'static str, L)>, Num)>,
    ) {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let _ = writeln!(self.out, "# HELP shardstone_{name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE shardstone_{name} {kind}");
        for (label, value) in samples {
            self.out.push_str("shardstone_");
            self.out.push_str(name);
            if let Some((label, value)) = label {
                let _ = write!(self.out, "{{{label}=\"{}\"}}", escape_label(value.as_ref()));
            }
            self.out.push(' ');
            match value {
                Num::Int(v) => {
                    let _ = write!(self.out, "{v}");
                }
                Num::Float(v) => write_float(&mut self.out, v),
            }
            self.out.push('\n');
        }
    }

    /// A family of one unlabelled sample.
    fn one(&mut self, name: &str, kind: Kind, help: &str, value: impl Into<Num>) {
        self.family(name, kind, help, [(None::<(&str, &str)>, value.into())]);
    }
}

fn write_float(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{v}");
    }
}

/// A label value as the format wants it: backslash, double quote and line feed
/// escaped.
fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// HELP text: backslash and line feed escaped.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

impl Stats {
    /// These statistics in the Prometheus text exposition format, ready to be
    /// served as `text/plain; version=0.0.4` from a scrape endpoint: one
    /// `shardstone_…` family per figure, counters for counts since the engine
    /// opened, gauges for the rest, durations in seconds, per-command series
    /// labelled `command`, per-consumer series labelled `consumer`. See
    /// docs/operations.md, "Logs and metrics", for the list.
    ///
    /// ```
    /// let engine = shardstone::Engine::in_memory()?;
    /// engine.run("deposit", |tx| tx.put(b"acct:7", b"10"))?;
    /// let text = engine.stats().to_prometheus();
    /// assert!(text.contains("# TYPE shardstone_commits_total counter\n"));
    /// assert!(text.contains("shardstone_command_commits_total{command=\"deposit\"} 1\n"));
    /// # Ok::<(), shardstone::Error>(())
    /// ```
    pub fn to_prometheus(&self) -> String {
        use Kind::{Counter, Gauge};
        let mut e = Exposition {
            out: String::with_capacity(8192),
        };

        e.one(
            "commit_id",
            Gauge,
            "Newest commit id visible to snapshots.",
            self.commit_id,
        );
        e.one(
            "commits_total",
            Counter,
            "Commits that installed writes.",
            self.commits,
        );
        e.one(
            "read_only_runs_total",
            Counter,
            "Command runs that wrote nothing.",
            self.read_only,
        );
        e.one(
            "conflicts_total",
            Counter,
            "Conflicts lost by commands (a key read or range scanned changed).",
            self.conflicts,
        );
        e.one(
            "page_changes_resolved_total",
            Counter,
            "Commits whose leaf changed but no key they read did: re-runs saved by key-level validation.",
            self.page_changes_resolved,
        );
        e.one(
            "retries_total",
            Counter,
            "Optimistic re-runs after a conflict.",
            self.retries,
        );
        e.one(
            "escalations_total",
            Counter,
            "Commands escalated to the blocking queue.",
            self.escalations,
        );
        e.one(
            "errors_total",
            Counter,
            "Command runs that ended in an error.",
            self.errors,
        );
        e.one(
            "restructures_total",
            Counter,
            "Commits that split, merged or removed pages.",
            self.restructures,
        );

        let q = &self.blocking_queue;
        e.one(
            "blocking_queue_depth",
            Gauge,
            "Commands waiting for or holding exclusive commit rights.",
            q.depth,
        );
        e.one(
            "blocking_queue_waiting",
            Gauge,
            "Escalated commands waiting for admission.",
            q.waiting,
        );
        e.one(
            "blocking_queue_escalated_total",
            Counter,
            "Commands that have gone through the blocking queue.",
            q.escalated,
        );
        e.one(
            "blocking_queue_seconds_total",
            Counter,
            "Time commands spent in the blocking queue, waiting and running.",
            q.total_time,
        );
        e.one(
            "blocking_queue_max_seconds",
            Gauge,
            "Longest time one command spent in the blocking queue.",
            q.max_time,
        );
        e.one(
            "lock_waits_total",
            Counter,
            "Waits for a key an escalated command held.",
            q.lock_waits,
        );
        e.one(
            "lock_wait_seconds_total",
            Counter,
            "Time spent waiting for keys escalated commands held.",
            q.lock_wait_time,
        );
        e.one(
            "deadlocks_total",
            Counter,
            "Lock waits that ended in Error::Deadlock.",
            q.deadlocks,
        );
        e.one(
            "timeouts_total",
            Counter,
            "Lock waits that ended in Error::Timeout.",
            q.timeouts,
        );
        e.one(
            "overloaded_total",
            Counter,
            "Commands turned away with Error::Overloaded.",
            q.overloaded,
        );

        type Per = fn(&super::CommandStats) -> Num;
        let per_command: [(&str, Kind, &str, Per); 12] = [
            (
                "command_runs_total",
                Counter,
                "Runs of the command that finished.",
                |c| c.runs.into(),
            ),
            (
                "command_commits_total",
                Counter,
                "Runs of the command that committed writes.",
                |c| c.commits.into(),
            ),
            (
                "command_read_only_total",
                Counter,
                "Runs of the command that wrote nothing.",
                |c| c.read_only.into(),
            ),
            (
                "command_conflicts_total",
                Counter,
                "Conflicts the command lost.",
                |c| c.conflicts.into(),
            ),
            (
                "command_page_changes_resolved_total",
                Counter,
                "Commits of the command that key-level validation let through.",
                |c| c.page_changes_resolved.into(),
            ),
            (
                "command_retries_total",
                Counter,
                "Optimistic re-runs of the command.",
                |c| c.retries.into(),
            ),
            (
                "command_escalations_total",
                Counter,
                "Runs of the command that were escalated.",
                |c| c.escalations.into(),
            ),
            (
                "command_errors_total",
                Counter,
                "Runs of the command that ended in an error.",
                |c| c.errors.into(),
            ),
            (
                "command_slow_runs_total",
                Counter,
                "Runs of the command longer than Options::slow_command.",
                |c| c.slow_runs.into(),
            ),
            (
                "command_conflicts_caused_total",
                Counter,
                "Conflicts other runs lost to commits of the command.",
                |c| c.conflicts_caused.into(),
            ),
            (
                "command_mean_duration_seconds",
                Gauge,
                "Mean wall time of a run of the command.",
                |c| c.mean_duration.into(),
            ),
            (
                "command_max_duration_seconds",
                Gauge,
                "Longest run of the command.",
                |c| c.max_duration.into(),
            ),
        ];
        for (name, kind, help, value) in per_command {
            e.family(
                name,
                kind,
                help,
                self.commands
                    .iter()
                    .map(|c| (Some(("command", c.name.as_str())), value(c))),
            );
        }

        e.family(
            "hot_page_conflicts",
            Gauge,
            "Conflicts on each of the pages that conflicted most.",
            self.hot_pages
                .iter()
                .map(|p| (Some(("page", p.page.get().to_string())), p.conflicts.into())),
        );

        let s = &self.store;
        e.one(
            "store_pages",
            Gauge,
            "Page ids in use (live pages of the tree).",
            s.pages,
        );
        e.one(
            "store_page_buffers",
            Gauge,
            "Arena pages handed out: live versions, old versions and overflow pages.",
            s.page_buffers,
        );
        e.one(
            "store_mapped_bytes",
            Gauge,
            "Bytes of address space mapped for pages.",
            s.mapped_bytes,
        );
        e.one(
            "store_pinned_versions",
            Gauge,
            "Old versions and overflow chains waiting for snapshots to move on.",
            s.pinned_versions,
        );
        e.one(
            "store_pinned_snapshots",
            Gauge,
            "Snapshots and transactions currently pinned.",
            s.pinned_snapshots,
        );
        e.one(
            "store_oldest_snapshot_age_seconds",
            Gauge,
            "How long the oldest live snapshot handle has been held (0: none).",
            s.oldest_snapshot_age.unwrap_or_default(),
        );
        e.one(
            "store_snapshot_pinned_bytes",
            Gauge,
            "Bytes of superseded page versions kept for older snapshots.",
            s.snapshot_pinned_bytes,
        );
        e.one(
            "store_versions_unlinked_total",
            Counter,
            "Page versions freed between snapshots by interval reclamation.",
            s.versions_unlinked,
        );
        e.one(
            "store_old_snapshot_warnings_total",
            Counter,
            "Snapshots noticed held longer than Options::snapshot_warn_age.",
            s.old_snapshot_warnings,
        );

        let j = &self.journal;
        e.one(
            "journal_shards",
            Gauge,
            "Journal shards appended to.",
            j.shards,
        );
        e.one(
            "journal_syncs_total",
            Counter,
            "fdatasync calls made by group commit.",
            j.syncs,
        );
        e.one(
            "journal_checkpoint_commit_id",
            Gauge,
            "Commit id of the newest checkpoint (0: none).",
            j.checkpoint,
        );
        e.one(
            "journal_segments",
            Gauge,
            "Journal segments written and not yet deleted by a checkpoint.",
            j.segments,
        );
        e.one(
            "journal_remote_appends_total",
            Counter,
            "Commits appended from another NUMA node than their shard's.",
            j.remote_appends,
        );
        let r = &j.recovery;
        e.one(
            "recovery_replayed_commits",
            Gauge,
            "Commits replayed from the journal when the engine was opened.",
            r.replayed,
        );
        e.one(
            "recovery_dropped_commits",
            Gauge,
            "Commits past the crash cut removed when the engine was opened.",
            r.dropped_commits,
        );
        e.one(
            "recovery_dropped_bytes",
            Gauge,
            "Bytes of torn or unacknowledged frames cut off when the engine was opened.",
            r.dropped_bytes,
        );
        e.one(
            "recovery_removed_segments",
            Gauge,
            "Empty segment files removed when the engine was opened.",
            r.removed_segments,
        );
        e.one(
            "recovery_salvaged",
            Gauge,
            "1 when the engine was opened with Options::salvage and gave something up.",
            r.salvage.is_some(),
        );

        let mut unnamed = 0usize;
        let consumers: Vec<String> = self
            .feed
            .iter()
            .map(|c| match &c.name {
                Some(name) => name.clone(),
                None => {
                    unnamed += 1;
                    format!("(unnamed {unnamed})")
                }
            })
            .collect();
        e.one(
            "feed_consumers",
            Gauge,
            "Attached feed consumers.",
            self.feed.len(),
        );
        type PerConsumer = fn(&crate::feed::ConsumerStats) -> Num;
        let per_consumer: [(&str, &str, PerConsumer); 4] = [
            (
                "feed_position",
                "The last commit delivered to the consumer.",
                |c| c.position.get().into(),
            ),
            (
                "feed_lag_commits",
                "Visible commits the consumer has not been given yet.",
                |c| c.lag_commits.into(),
            ),
            (
                "feed_lag_bytes",
                "Record bytes the consumer has not been given yet.",
                |c| c.lag_bytes.into(),
            ),
            ("feed_paused", "1 while the consumer is paused.", |c| {
                c.paused.into()
            }),
        ];
        for (name, help, value) in per_consumer {
            e.family(
                name,
                Gauge,
                help,
                self.feed
                    .iter()
                    .zip(&consumers)
                    .map(|(c, label)| (Some(("consumer", label.as_str())), value(c))),
            );
        }

        e.one(
            "slow_commands_total",
            Counter,
            "Runs longer than Options::slow_command.",
            self.slow_command_count,
        );
        let st = &self.storm;
        e.one(
            "storm_window_seconds",
            Gauge,
            "The span the storm figures cover.",
            st.window,
        );
        e.one(
            "storm_attempts_per_commit",
            Gauge,
            "Attempts per commit over the storm window (1.0: no lost conflicts).",
            st.attempts_per_commit,
        );
        e.one(
            "storm_escalations_per_second",
            Gauge,
            "Escalations per second over the storm window.",
            st.escalations_per_second,
        );
        e.one(
            "storming",
            Gauge,
            "1 while the retry-storm thresholds are crossed.",
            st.storming,
        );
        e.one(
            "storms_total",
            Counter,
            "Times the engine crossed into a retry storm.",
            st.storms,
        );
        e.one(
            "callback_panics_total",
            Counter,
            "Slow-command and storm callbacks that panicked.",
            self.callback_panics,
        );
        e.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_and_help_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(escape_help("x\\y\nz \""), "x\\\\y\\nz \"");
    }

    #[test]
    fn floats_are_written_without_exponents_and_specials_by_name() {
        let mut s = String::new();
        write_float(&mut s, 1e-7);
        s.push(' ');
        write_float(&mut s, f64::INFINITY);
        s.push(' ');
        write_float(&mut s, f64::NAN);
        assert_eq!(s, "0.0000001 +Inf NaN");
    }
}
