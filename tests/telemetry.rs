//! Logs and metrics (issue 16, item 8): the `tracing` events the library emits,
//! `Stats::to_prometheus`, and (with `--features serde`) the JSON shape of `Stats`.
//!
//! The events are collected by a tiny `Subscriber` installed as the global
//! default (events from any thread count). Tests that read events take
//! `SERIAL` so that one test's events are not another's.

use shardstone::{Engine, Options, Stats};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, Once};
use std::time::Duration;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// One event as the collector saw it.
#[derive(Clone, Debug)]
struct Seen {
    target: String,
    level: Level,
    message: String,
    fields: BTreeMap<String, String>,
    /// The spans it happened in, outermost first: (name, fields).
    spans: Vec<SpanInfo>,
}

#[derive(Default)]
struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

static EVENTS: Mutex<Vec<Seen>> = Mutex::new(Vec::new());
/// A span's name and fields.
type SpanInfo = (String, BTreeMap<String, String>);

static SPANS: Mutex<Option<HashMap<u64, SpanInfo>>> = Mutex::new(None);
static NEXT_SPAN: AtomicU64 = AtomicU64::new(1);
static SERIAL: Mutex<()> = Mutex::new(());

thread_local! {
    static ENTERED: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
}

struct Collector;

impl Subscriber for Collector {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let id = NEXT_SPAN.fetch_add(1, Ordering::Relaxed);
        let mut fields = Fields::default();
        span.record(&mut fields);
        SPANS
            .lock()
            .unwrap()
            .get_or_insert_with(HashMap::new)
            .insert(id, (span.metadata().name().to_owned(), fields.0));
        Id::from_u64(id)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let message = fields.0.remove("message").unwrap_or_default();
        let spans = ENTERED.with(|e| {
            let all = SPANS.lock().unwrap();
            e.borrow()
                .iter()
                .filter_map(|id| all.as_ref()?.get(id).cloned())
                .collect()
        });
        EVENTS.lock().unwrap().push(Seen {
            target: event.metadata().target().to_owned(),
            level: *event.metadata().level(),
            message,
            fields: fields.0,
            spans,
        });
    }
    fn enter(&self, span: &Id) {
        ENTERED.with(|e| e.borrow_mut().push(span.into_u64()));
    }
    fn exit(&self, span: &Id) {
        ENTERED.with(|e| {
            let mut e = e.borrow_mut();
            if let Some(at) = e.iter().rposition(|&s| s == span.into_u64()) {
                e.remove(at);
            }
        });
    }
}

/// Installs the collector (once per test binary), takes the serial lock and
/// forgets earlier events.
fn collecting() -> MutexGuard<'static, ()> {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| tracing::subscriber::set_global_default(Collector).unwrap());
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    EVENTS.lock().unwrap().clear();
    guard
}

fn events(message: &str) -> Vec<Seen> {
    EVENTS
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.message == message)
        .cloned()
        .collect()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "shardstone-telemetry-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn open_and_recovery_are_traced_with_what_was_replayed() {
    let _serial = collecting();
    let dir = scratch("recovery");
    {
        let engine = Engine::open(&dir).unwrap();
        for i in 0..5u32 {
            engine
                .run("put", |tx| tx.put(&i.to_be_bytes(), b"v"))
                .unwrap();
        }
    }
    EVENTS.lock().unwrap().clear();
    let engine = Engine::open(&dir).unwrap();
    let replayed = engine.stats().journal.recovery.replayed;
    assert_eq!(replayed, 5);

    let recovered = events("recovered");
    assert_eq!(recovered.len(), 1, "{recovered:?}");
    let e = &recovered[0];
    assert_eq!(e.target, "shardstone");
    assert_eq!(e.level, Level::INFO);
    assert_eq!(e.fields["replayed"], "5");
    assert_eq!(e.fields["last_commit"], "5");
    assert_eq!(e.fields["checkpoint"], "0");
    for field in [
        "promised",
        "dropped_commits",
        "dropped_bytes",
        "removed_segments",
        "segments",
        "salvaged",
    ] {
        assert!(e.fields.contains_key(field), "{field} missing: {e:?}");
    }
    assert_eq!(e.fields["salvaged"], "false");
    let (span, fields) = e.spans.last().expect("inside the open span");
    assert_eq!(span, "open");
    assert_eq!(fields["dir"], dir.display().to_string());
    assert_eq!(fields["read_only"], "false");
    assert!(events("salvage open gave up part of the database").is_empty());
    drop(engine);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_failed_open_is_traced_as_an_error() {
    let _serial = collecting();
    let dir = scratch("failed-open");
    std::fs::create_dir_all(&dir).unwrap();
    // A writer holds the directory's lock: a second writer is refused.
    let engine = Engine::open(&dir).unwrap();
    let err = Engine::open(&dir).unwrap_err();
    let failed = events("open failed");
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].level, Level::ERROR);
    assert_eq!(failed[0].fields["error"], err.to_string());
    drop(engine);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn checkpoints_are_traced_with_commit_id_bytes_and_duration() {
    let _serial = collecting();
    let dir = scratch("checkpoint");
    let engine = Engine::open(&dir).unwrap();
    for i in 0..100u32 {
        engine
            .run("put", |tx| tx.put(&i.to_be_bytes(), &[7u8; 100]))
            .unwrap();
    }
    let at = engine.checkpoint().unwrap().get();

    let started = events("checkpoint started");
    assert_eq!(started.len(), 1, "{started:?}");
    assert_eq!(started[0].level, Level::DEBUG);
    assert_eq!(started[0].fields["commit_id"], at.to_string());
    let written = events("checkpoint written");
    assert_eq!(written.len(), 1, "{written:?}");
    let e = &written[0];
    assert_eq!(e.level, Level::INFO);
    assert_eq!(e.fields["commit_id"], at.to_string());
    assert_eq!(e.fields["dir"], dir.display().to_string());
    let bytes: u64 = e.fields["bytes"].parse().unwrap();
    assert!(bytes > 100 * 100, "the checkpoint holds the values: {e:?}");
    let secs: f64 = e.fields["duration_secs"].parse().unwrap();
    assert!(secs >= 0.0, "{e:?}");
    assert!(e.fields.contains_key("retired_segments"), "{e:?}");
    drop(engine);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn slow_commands_are_traced_as_warnings_with_their_footprint() {
    let _serial = collecting();
    let engine = Engine::in_memory_with(Options {
        slow_command: Some(Duration::from_millis(20)),
        ..Default::default()
    })
    .unwrap();
    engine.run("quick", |tx| tx.put(b"a", b"1")).unwrap();
    engine
        .run("nightly \"report\"", |tx| {
            tx.get(b"a")?;
            std::thread::sleep(Duration::from_millis(80));
            tx.put(b"b", b"2")
        })
        .unwrap();

    let slow = events("slow command");
    assert_eq!(slow.len(), 1, "only the slow run: {slow:?}");
    let e = &slow[0];
    assert_eq!((e.target.as_str(), e.level), ("shardstone", Level::WARN));
    assert_eq!(e.fields["command"], "nightly \"report\"");
    assert_eq!(e.fields["attempts"], "1");
    assert_eq!(e.fields["conflicts"], "0");
    assert_eq!(e.fields["escalated"], "false");
    assert_eq!(e.fields["ending"], "Committed");
    assert_eq!(e.fields["keys_read"], "1");
    assert_eq!(e.fields["keys_written"], "1");
    let secs: f64 = e.fields["duration_secs"].parse().unwrap();
    assert!(secs >= 0.08, "{e:?}");
}

#[test]
fn no_event_per_commit() {
    let _serial = collecting();
    let dir = scratch("quiet");
    let engine = Engine::open(&dir).unwrap();
    EVENTS.lock().unwrap().clear();
    for i in 0..200u32 {
        engine
            .run("put", |tx| tx.put(&i.to_be_bytes(), b"v"))
            .unwrap();
    }
    let _ = engine.stats();
    let seen = EVENTS.lock().unwrap().clone();
    assert!(seen.is_empty(), "commits emit nothing: {seen:?}");
    drop(engine);
    let _ = std::fs::remove_dir_all(&dir);
}

/// One sample line of the exposition.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

/// Parses `name{l="v",...} value`, undoing the label-value escapes.
fn parse_sample(line: &str) -> Sample {
    let name_end = line
        .find(['{', ' '])
        .unwrap_or_else(|| panic!("no value: {line:?}"));
    let name = &line[..name_end];
    assert!(
        name.chars()
            .enumerate()
            .all(|(i, c)| c.is_ascii_alphabetic()
                || c == '_'
                || c == ':'
                || (i > 0 && c.is_ascii_digit())),
        "bad metric name {name:?}"
    );
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(mut body) = rest.strip_prefix('{') {
        loop {
            let (label, after) = body.split_once("=\"").expect("label=\"value\"");
            assert!(
                !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "label name {label:?} in {line:?}"
            );
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next().expect("unterminated label value") {
                    (_, '\\') => match chars.next().expect("escape").1 {
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        'n' => value.push('\n'),
                        c => panic!("bad escape \\{c} in {line:?}"),
                    },
                    (i, '"') => break i + 1,
                    (_, '\n') => panic!("raw newline in {line:?}"),
                    (_, c) => value.push(c),
                }
            };
            labels.push((label.to_owned(), value));
            match after[end..].chars().next() {
                Some(',') => body = &after[end + 1..],
                Some('}') => {
                    rest = &after[end + 1..];
                    break;
                }
                other => panic!("unexpected {other:?} in {line:?}"),
            }
        }
    }
    let value = rest.strip_prefix(' ').expect("space before the value");
    assert!(!value.contains(' '), "no timestamps: {line:?}");
    let value: f64 = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}")),
    };
    Sample {
        name: name.to_owned(),
        labels,
        value,
    }
}

/// The exposition checked line by line: every family has one HELP and one TYPE
/// before its samples, samples of a family are contiguous, names carry the
/// prefix, counters end in `_total`. Returns the samples.
fn parse_exposition(text: &str) -> Vec<Sample> {
    assert!(text.ends_with('\n'));
    let mut help: HashMap<String, usize> = HashMap::new();
    let mut types: HashMap<String, String> = HashMap::new();
    let mut finished: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, doc) = rest.split_once(' ').expect("HELP has text");
            assert!(!doc.is_empty());
            *help.entry(name.to_owned()).or_default() += 1;
            if let Some(c) = current.replace(name.to_owned()) {
                if c != name {
                    finished.push(c);
                }
            }
            assert!(!finished.contains(&name.to_owned()), "{name} split");
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE has a kind");
            assert_eq!(current.as_deref(), Some(name), "TYPE after its HELP");
            assert!(matches!(kind, "counter" | "gauge"), "{line}");
            assert!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "TYPE of {name} twice"
            );
            if kind == "counter" {
                assert!(name.ends_with("_total"), "counter {name}");
            }
        } else {
            assert!(!line.starts_with('#'), "{line}");
            let s = parse_sample(line);
            assert!(s.name.starts_with("shardstone_"), "{line}");
            assert_eq!(
                current.as_deref(),
                Some(s.name.as_str()),
                "sample outside its family: {line}"
            );
            assert!(types.contains_key(&s.name), "no TYPE before {line}");
            samples.push(s);
        }
    }
    for (name, n) in &help {
        assert_eq!(*n, 1, "HELP of {name}");
        assert!(types.contains_key(name), "TYPE of {name}");
    }
    // No two samples with the same name and labels.
    let mut seen = std::collections::HashSet::new();
    for s in &samples {
        assert!(
            seen.insert((s.name.clone(), s.labels.clone())),
            "duplicate series {s:?}"
        );
    }
    samples
}

fn value(samples: &[Sample], name: &str, label: Option<(&str, &str)>) -> f64 {
    let want: Vec<(String, String)> = label
        .map(|(l, v)| vec![(l.to_owned(), v.to_owned())])
        .unwrap_or_default();
    samples
        .iter()
        .find(|s| s.name == name && s.labels == want)
        .unwrap_or_else(|| panic!("no sample {name} {label:?}"))
        .value
}

#[test]
fn prometheus_exposition_parses_and_matches_stats() {
    let _serial = collecting();
    let weird = "say \"hi\"\\\nbye";
    let dir = scratch("prometheus");
    let engine = Engine::open(&dir).unwrap();
    for i in 0..10u32 {
        engine
            .run("deposit", |tx| tx.put(&i.to_be_bytes(), b"v"))
            .unwrap();
    }
    engine.run(weird, |tx| tx.put(b"w", b"1")).unwrap();
    engine.run(weird, |tx| tx.get(b"w").map(|_| ())).unwrap();
    let _ = engine.run("fails", |_| Err::<(), _>(shardstone::Error::abort("no")));
    engine.checkpoint().unwrap();
    let mut feed = engine.subscribe_as("billing", 0).unwrap();
    feed.next().unwrap().unwrap();
    let _plain = engine.subscribe(3).unwrap();

    let stats: Stats = engine.stats();
    let text = stats.to_prometheus();
    let samples = parse_exposition(&text);

    assert_eq!(
        value(&samples, "shardstone_commit_id", None),
        stats.commit_id as f64
    );
    assert_eq!(
        value(&samples, "shardstone_commits_total", None),
        stats.commits as f64
    );
    assert_eq!(value(&samples, "shardstone_commits_total", None), 11.0);
    assert_eq!(
        value(&samples, "shardstone_read_only_runs_total", None),
        stats.read_only as f64
    );
    assert_eq!(
        value(&samples, "shardstone_errors_total", None),
        stats.errors as f64
    );
    assert_eq!(
        value(&samples, "shardstone_conflicts_total", None),
        stats.conflicts as f64
    );
    assert_eq!(
        value(&samples, "shardstone_escalations_total", None),
        stats.escalations as f64
    );
    assert_eq!(
        value(&samples, "shardstone_journal_syncs_total", None),
        stats.journal.syncs as f64
    );
    assert_eq!(
        value(&samples, "shardstone_journal_checkpoint_commit_id", None),
        stats.journal.checkpoint as f64
    );
    for c in &stats.commands {
        let l = Some(("command", c.name.as_str()));
        assert_eq!(
            value(&samples, "shardstone_command_runs_total", l),
            c.runs as f64
        );
        assert_eq!(
            value(&samples, "shardstone_command_commits_total", l),
            c.commits as f64
        );
        assert_eq!(
            value(&samples, "shardstone_command_read_only_total", l),
            c.read_only as f64
        );
        assert_eq!(
            value(&samples, "shardstone_command_errors_total", l),
            c.errors as f64
        );
        assert_eq!(
            value(&samples, "shardstone_command_max_duration_seconds", l),
            c.max_duration.as_secs_f64()
        );
    }
    // The escaped name reads back as the name.
    let l = Some(("command", weird));
    assert_eq!(value(&samples, "shardstone_command_runs_total", l), 2.0);
    assert_eq!(value(&samples, "shardstone_command_commits_total", l), 1.0);
    assert!(
        text.contains("command=\"say \\\"hi\\\"\\\\\\nbye\""),
        "escaped on the wire"
    );
    assert_eq!(
        value(
            &samples,
            "shardstone_command_errors_total",
            Some(("command", "fails"))
        ),
        1.0
    );

    assert_eq!(value(&samples, "shardstone_feed_consumers", None), 2.0);
    let billing = stats
        .feed
        .iter()
        .find(|c| c.name.as_deref() == Some("billing"))
        .unwrap();
    let l = Some(("consumer", "billing"));
    assert_eq!(value(&samples, "shardstone_feed_position", l), 1.0);
    assert_eq!(
        value(&samples, "shardstone_feed_lag_commits", l),
        billing.lag_commits as f64
    );
    assert_eq!(
        value(
            &samples,
            "shardstone_feed_lag_commits",
            Some(("consumer", "(unnamed 1)"))
        ),
        (stats.commit_id - 3) as f64
    );
    assert_eq!(value(&samples, "shardstone_storming", None), 0.0);
    drop((feed, engine));
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(feature = "serde")]
#[test]
fn stats_serialize_to_json_with_seconds_and_hex_keys() {
    let _serial = collecting();
    let engine = Engine::in_memory_with(Options {
        slow_command: Some(Duration::from_millis(10)),
        ..Default::default()
    })
    .unwrap();
    engine
        .run("deposit", |tx| tx.put(b"acct:\x01", b"10"))
        .unwrap();
    engine
        .run("slow", |tx| {
            tx.get(b"acct:\x01")?;
            std::thread::sleep(Duration::from_millis(30));
            tx.put(b"\xff", b"1")
        })
        .unwrap();
    let snap = engine.snapshot();
    let stats = engine.stats();
    let json = serde_json::to_value(&stats).unwrap();

    assert_eq!(json["commit_id"], stats.commit_id);
    assert_eq!(json["commits"], 2);
    assert_eq!(json["commands"][0]["name"], "deposit");
    assert!(json["commands"][0]["mean_duration"].is_f64(), "{json}");
    assert!(json["blocking_queue"]["total_time"].is_f64());
    assert_eq!(json["journal"]["recovery"]["replayed"], 0);
    assert!(json["journal"]["recovery"]["salvage"].is_null());
    assert!(
        json["store"]["oldest_snapshot_age"].is_f64(),
        "a snapshot is held"
    );
    assert!(json["storm"]["window"].is_f64());
    assert_eq!(json["storm"]["storming"], false);
    let slow = &json["slow_commands"][0];
    assert_eq!(slow["name"], "slow");
    assert_eq!(slow["ending"], "Committed");
    assert!(slow["duration"].as_f64().unwrap() >= 0.03);
    assert!(
        slow["finished_at"].as_f64().unwrap() > 1.6e9,
        "Unix seconds"
    );
    // Keys in lowercase hex: written keys first.
    assert_eq!(
        slow["last_attempt"]["sample_keys"],
        serde_json::json!(["ff", "616363743a01"])
    );
    // The whole shape round-trips through text.
    let text = serde_json::to_string(&stats).unwrap();
    let back: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(back, json);
    drop(snap);
}
