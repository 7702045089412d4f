//! Every `shardstone` command end to end on real directories the library made:
//! clean, damaged (a flipped byte in a segment, a deleted segment, a truncated
//! checkpoint), not a database, and in use; exit codes and `--json` output
//! checked against what the library says.

use serde_json::Value;
use shardstone::{Durability, Engine, Options, StateDigest};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let path =
            std::env::temp_dir().join(format!("shardstone-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn shardstone(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shardstone"))
        .args(args.iter().map(|a| a.as_ref()))
        .output()
        .unwrap()
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exited, not killed")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}{}", stdout(out), stderr(out)))
}

/// Asserts the exit code, showing the output when it is not the one expected.
fn expect(out: &Output, want: i32) {
    assert_eq!(
        code(out),
        want,
        "stdout:\n{}\nstderr:\n{}",
        stdout(out),
        stderr(out)
    );
}

fn opts() -> Options {
    Options {
        durability: Durability::Durable,
        journal_shards: 2,
        segment_size: 64 * 1024,
        numa: shardstone::numa::Numa::Off,
        ..Default::default()
    }
}

/// What the test database holds, commit by commit.
struct Built {
    /// `digests[n]`: the state digest at commit n.
    digests: Vec<StateDigest>,
    /// `commands[n - 1]`: commit n's command name and the keys it wrote.
    commits: Vec<(String, Vec<Vec<u8>>)>,
    /// The commit of the newest checkpoint.
    checkpoint: u64,
}

impl Built {
    /// The commits from `first` on that ran `command` (if given) and wrote a key
    /// passing `key`: what a journal search must find.
    fn expected(&self, first: u64, command: Option<&str>, key: impl Fn(&[u8]) -> bool) -> Vec<u64> {
        (first..=self.commits.len() as u64)
            .filter(|&id| {
                let (name, keys) = &self.commits[id as usize - 1];
                command.is_none_or(|c| c == name) && keys.iter().any(|k| key(k))
            })
            .collect()
    }
}

const ACCOUNTS: u64 = 20;

/// Commits 1..=20 open accounts (`open-account`, key `acct:NN`), checkpoints at
/// 10 and 20 (the one at 10 is kept for point-in-time restore, with the journal
/// after it), commits 21..=40 are deposits to account i % 20, commit 41 is a
/// `repair` of accounts 03 and 05 that deletes account 07, commit 42 writes a
/// key that is not UTF-8, commits 43..=60 are more deposits (large values every
/// fourth one, so segments fill).
fn build(dir: &Path) -> (Engine, Built) {
    let engine = Engine::open_with(dir, opts()).unwrap();
    let mut built = Built {
        digests: vec![engine.snapshot().state_digest().unwrap()],
        commits: Vec::new(),
        checkpoint: 20,
    };
    let mut commit = |name: &str, writes: Vec<(Vec<u8>, Option<Vec<u8>>)>| {
        engine
            .run(name, |tx| {
                for (key, value) in &writes {
                    match value {
                        Some(v) => tx.put(key, v)?,
                        None => tx.delete(key).map(drop)?,
                    }
                }
                Ok(())
            })
            .unwrap();
        built
            .digests
            .push(engine.snapshot().state_digest().unwrap());
        built.commits.push((
            name.to_owned(),
            writes.into_iter().map(|(k, _)| k).collect(),
        ));
        assert_eq!(engine.commit_id().get() as usize, built.commits.len());
    };
    let acct = |i: u64| format!("acct:{:02}", i % ACCOUNTS).into_bytes();
    for i in 0..ACCOUNTS {
        commit("open-account", vec![(acct(i), Some(b"0".to_vec()))]);
        if i == 9 || i == 19 {
            engine.checkpoint().unwrap();
        }
    }
    for i in 0..20u64 {
        commit(
            "deposit",
            vec![(acct(i), Some(format!("{}", i * 10).into_bytes()))],
        );
    }
    commit(
        "repair",
        vec![
            (acct(3), Some(b"repaired".to_vec())),
            (acct(5), Some(b"repaired".to_vec())),
            (acct(7), None),
        ],
    );
    commit(
        "binary",
        vec![(vec![0xff, 0x00, 0x01], Some(vec![0xfe; 4]))],
    );
    for i in 0..18u64 {
        let value = if i % 4 == 0 {
            vec![b'x'; 9000]
        } else {
            b"5".to_vec()
        };
        commit("deposit", vec![(acct(i * 3), Some(value))]);
    }
    assert_eq!(engine.commit_id().get(), 60);
    (engine, built)
}

/// A closed test database in `dir`.
fn closed(dir: &Path) -> Built {
    let (engine, built) = build(dir);
    engine.close().unwrap();
    built
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else if entry.file_name() != "LOCK" {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(dir.join("journal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    segs.sort();
    segs
}

/// The segment whose bytes contain `needle`.
fn segment_holding(dir: &Path, needle: &[u8]) -> PathBuf {
    segments(dir)
        .into_iter()
        .find(|seg| {
            std::fs::read(seg)
                .unwrap()
                .windows(needle.len())
                .any(|w| w == needle)
        })
        .expect("a segment holding it")
}

fn checkpoint_file(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "ckpt"))
        .expect("a checkpoint")
}

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

fn commits(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|r| r["commit"].as_u64().unwrap())
        .collect()
}

#[test]
fn stat_human_and_json_match_the_library() {
    let tmp = TempDir::new("stat");
    let db = tmp.join("db");
    let (engine, built) = build(&db);
    let (last, hash) = engine.last_commit();
    engine.close().unwrap();

    let out = shardstone(&[&"stat", &db]);
    expect(&out, 0);
    assert!(
        stdout(&out).contains(&format!("last commit: 60 (chain hash {hash})")),
        "{}",
        stdout(&out)
    );

    let out = shardstone(&[&"stat", &db, &"--json"]);
    expect(&out, 0);
    let v = json(&out);
    let lib = shardstone::stat_dir(&db).unwrap();
    assert_eq!(v["last_commit"]["commit"], last.get());
    assert_eq!(v["last_commit"]["hash"], hash.to_string());
    assert_eq!(v["checkpoint"]["commit"], built.checkpoint);
    assert_eq!(v["shards"], lib.shards);
    assert_eq!(v["bytes"]["total"], lib.total_bytes);
    assert_eq!(v["bytes"]["journal"], lib.journal_bytes);
    assert_eq!(v["in_use"], false);
    assert_eq!(v["problems"].as_array().unwrap().len(), 0);
    let segs: u64 = v["segments_per_shard"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(segs as usize, segments(&db).len());
}

#[test]
fn a_clean_database_verifies() {
    let tmp = TempDir::new("verify-clean");
    let db = tmp.join("db");
    closed(&db);
    let out = shardstone(&[&"verify", &db]);
    expect(&out, 0);
    assert!(stdout(&out).starts_with("ok"), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("intact up to commit 60"),
        "{}",
        stdout(&out)
    );
    let out = shardstone(&[&"verify", &"--json", &db]);
    expect(&out, 0);
    let v = json(&out);
    assert_eq!(v["ok"], true);
    assert_eq!(v["intact_up_to"]["commit"], 60);
    assert_eq!(v["findings"].as_array().unwrap().len(), 0);
}

/// A damaged copy of a clean closed database, and what `verify --json` says of it.
fn verify_damaged(name: &str, damage: impl FnOnce(&Path)) -> (TempDir, PathBuf, Value, String) {
    let tmp = TempDir::new(name);
    let db = tmp.join("db");
    closed(&db);
    let copy = tmp.join("copy");
    copy_dir(&db, &copy);
    damage(&copy);
    let human = shardstone(&[&"verify", &copy]);
    expect(&human, 3);
    let out = shardstone(&[&"verify", &copy, &"--json"]);
    expect(&out, 3);
    let v = json(&out);
    assert_eq!(v["ok"], false);
    (tmp, copy, v, stdout(&human))
}

fn finding<'a>(v: &'a Value, what: &str, file: &Path) -> &'a Value {
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["what"] == what && f["file"].as_str().is_some_and(|p| p.ends_with(&name(file))))
        .unwrap_or_else(|| panic!("no {what} finding naming {}: {v:#}", file.display()))
}

#[test]
fn verify_names_a_flipped_byte_in_a_segment() {
    let mut flipped = None;
    let (_tmp, _copy, v, human) = verify_damaged("verify-flip", |dir| {
        // Inside the body of the repair (commit 41, after the checkpoint).
        let seg = segment_holding(dir, b"repaired");
        let mut bytes = std::fs::read(&seg).unwrap();
        let at = bytes.windows(8).position(|w| w == b"repaired").unwrap();
        bytes[at] ^= 0x40;
        std::fs::write(&seg, bytes).unwrap();
        flipped = Some((seg, at as u64));
    });
    let (seg, at) = flipped.unwrap();
    let f = finding(&v, "SegmentDamaged", &seg);
    assert!(f["offset"].as_u64().unwrap() <= at, "{f}");
    assert_eq!(v["intact_up_to"]["commit"], 40, "{v:#}");
    assert!(
        // The next commit promised in that shard, if any: it depends on
        // which CPUs the commits ran on.
        f["commit"].as_u64().is_none_or(|c| c > 40),
        "{f}"
    );
    assert!(human.starts_with("DAMAGED"), "{human}");
    assert!(human.contains(&name(&seg)), "{human}");
    assert!(human.contains("at byte"), "{human}");
}

#[test]
fn verify_names_a_deleted_segment() {
    let mut deleted = None;
    let (_tmp, _copy, v, human) = verify_damaged("verify-deleted", |dir| {
        // Which shard a commit lands in depends on the CPU it ran on: delete
        // the segment that holds commit 41, after the checkpoint.
        let seg = segment_holding(dir, b"repaired");
        std::fs::remove_file(&seg).unwrap();
        deleted = Some(seg);
    });
    let seg = deleted.unwrap();
    finding(&v, "SegmentMissing", &seg);
    assert!(human.contains(&name(&seg)), "{human}");
}

#[test]
fn verify_names_a_truncated_checkpoint() {
    let mut cut = None;
    let (_tmp, _copy, v, human) = verify_damaged("verify-ckpt", |dir| {
        let ckpt = checkpoint_file(dir);
        let len = std::fs::metadata(&ckpt).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&ckpt)
            .unwrap()
            .set_len(len / 2)
            .unwrap();
        cut = Some(ckpt);
    });
    let ckpt = cut.unwrap();
    // Cut inside its only block, a checkpoint reads as damaged or missing blocks.
    let f = ["CheckpointDamaged", "CheckpointMissing"]
        .iter()
        .find(|what| {
            v["findings"].as_array().unwrap().iter().any(|f| {
                f["what"] == **what
                    && f["file"]
                        .as_str()
                        .is_some_and(|p| p.ends_with(&name(&ckpt)))
            })
        });
    assert!(
        f.is_some(),
        "no checkpoint finding naming {}: {v:#}",
        ckpt.display()
    );
    assert!(human.contains(&name(&ckpt)), "{human}");
}

#[test]
fn a_missing_manifest_is_damage_not_a_missing_database() {
    let tmp = TempDir::new("no-manifest");
    let db = tmp.join("db");
    closed(&db);
    std::fs::remove_file(db.join("manifest")).unwrap();
    expect(&shardstone(&[&"verify", &db]), 3);
    let out = shardstone(&[&"journal", &"tail", &db]);
    expect(&out, 3);
    assert!(stderr(&out).contains("no manifest"), "{}", stderr(&out));
}

#[test]
fn backup_then_restore_to_a_commit_gives_the_state_at_that_commit() {
    let tmp = TempDir::new("backup-restore");
    let db = tmp.join("db");
    let built = closed(&db);
    let backup = tmp.join("backup");

    let out = shardstone(&[&"backup", &db, &backup, &"--json"]);
    expect(&out, 0);
    let info = json(&out);
    assert_eq!(info["commit"], 60);
    assert!(info["bytes_copied"].as_u64().unwrap() > 0);
    let oldest = info["oldest_restorable"].as_u64().unwrap();
    assert_eq!(oldest, 10, "{info:#}");

    // A second backup into the same destination copies nothing new.
    let out = shardstone(&[&"backup", &db, &backup]);
    expect(&out, 0);
    assert!(stdout(&out).contains("at commit 60"), "{}", stdout(&out));
    assert!(stdout(&out).contains("copied 0 bytes"), "{}", stdout(&out));

    // Before the checkpoint, at it, after it, and the last commit.
    for n in [oldest, 15, built.checkpoint, 41, 60] {
        let dest = tmp.join(&format!("at-{n}"));
        let out = shardstone(&[&"restore", &backup, &"--to-commit", &n.to_string(), &dest]);
        expect(&out, 0);
        assert!(
            stdout(&out).contains(&format!("at commit {n}")),
            "{}",
            stdout(&out)
        );
        let engine = Engine::open_with(&dest, opts()).unwrap();
        assert_eq!(engine.commit_id().get(), n);
        assert_eq!(
            engine.snapshot().state_digest().unwrap(),
            built.digests[n as usize],
            "the restore at {n} differs from the source at {n}"
        );
        engine.close().unwrap();
        // `shardstone digest` says the same.
        let out = shardstone(&[&"digest", &dest, &"--json"]);
        expect(&out, 0);
        let v = json(&out);
        assert_eq!(v["commit"], n);
        assert_eq!(v["digest"], built.digests[n as usize].to_string());
    }

    let latest = tmp.join("latest");
    let out = shardstone(&[&"restore", &backup, &latest, &"--latest", &"--json"]);
    expect(&out, 0);
    assert_eq!(json(&out)["commit"], 60);

    // Past the newest commit: refused, saying what the backup holds.
    let out = shardstone(&[
        &"restore",
        &backup,
        &"--to-commit",
        &"61",
        &tmp.join("past"),
    ]);
    expect(&out, 1);
    assert!(
        stderr(&out).contains("newest commit this backup holds is 60"),
        "{}",
        stderr(&out)
    );
    assert!(!tmp.join("past").exists());
}

#[test]
fn restore_refuses_an_existing_destination() {
    let tmp = TempDir::new("restore-exists");
    let db = tmp.join("db");
    closed(&db);
    let dest = tmp.join("dest");
    std::fs::create_dir(&dest).unwrap();
    std::fs::write(dest.join("precious"), b"keep me").unwrap();
    let out = shardstone(&[&"restore", &db, &"--to-commit", &"30", &dest]);
    expect(&out, 1);
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    assert_eq!(std::fs::read(dest.join("precious")).unwrap(), b"keep me");
    let out = shardstone(&[&"restore", &db, &"--latest", &dest, &"--json"]);
    expect(&out, 1);
    assert_eq!(json(&out)["kind"], "error");
}

#[test]
fn journal_search_finds_exactly_the_commits() {
    let tmp = TempDir::new("search");
    let db = tmp.join("db");
    let built = closed(&db);
    let search = |args: &[&dyn AsRef<std::ffi::OsStr>]| {
        let mut all: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"journal", &"search", &db, &"--json"];
        all.extend_from_slice(args);
        let out = shardstone(&all);
        expect(&out, 0);
        commits(&json(&out))
    };
    // The journal is kept from the checkpoint before the newest one on.
    let (first, last) = shardstone::JournalReader::open(&db)
        .unwrap()
        .bounds()
        .unwrap()
        .unwrap();
    assert_eq!((first.get(), last.get()), (11, 60));
    let expected =
        |command: Option<&str>, key: &dyn Fn(&[u8]) -> bool| built.expected(11, command, key);

    let acct03 = expected(None, &|k| k == b"acct:03");
    assert!(acct03.contains(&41) && acct03.len() >= 3, "{acct03:?}");
    assert_eq!(search(&[&"--key", &"acct:03"]), acct03);
    assert_eq!(search(&[&"--command", &"repair"]), vec![41]);
    assert_eq!(
        search(&[&"--key", &"acct:07"]),
        expected(None, &|k| k == b"acct:07")
    );
    assert_eq!(search(&[&"--key-hex", &"ff0001"]), vec![42]);
    assert_eq!(search(&[&"--prefix-hex", &"0xff"]), vec![42]);
    assert_eq!(
        search(&[&"--prefix", &"acct:1"]),
        expected(None, &|k| k.starts_with(b"acct:1"))
    );
    // Bounded by --from and --to (inclusive).
    assert_eq!(
        search(&[&"--prefix", &"acct:", &"--from", &"38", &"--to", &"44"]),
        vec![38, 39, 40, 41, 43, 44]
    );
    assert_eq!(
        search(&[&"--command", &"deposit", &"--key", &"acct:03"]),
        expected(Some("deposit"), &|k| k == b"acct:03")
    );
    assert_eq!(
        search(&[&"--command", &"open-account"]),
        (11..=20).collect::<Vec<u64>>()
    );
    assert_eq!(
        search(&[&"--command", &"no-such-command"]),
        Vec::<u64>::new()
    );
    assert_eq!(
        search(&[&"--command", &"deposit", &"--limit", &"2"]),
        vec![21, 22]
    );

    // Human output: the keys as text, the binary key as hex.
    let out = shardstone(&[&"journal", &"search", &db, &"--command", &"repair"]);
    expect(&out, 0);
    let text = stdout(&out);
    assert!(text.contains("commit 41: repair"), "{text}");
    assert!(text.contains(r#"put    "acct:03" = "repaired""#), "{text}");
    assert!(text.contains(r#"delete "acct:07""#), "{text}");
    let out = shardstone(&[&"journal", &"search", &db, &"--prefix-hex", &"ff"]);
    assert!(
        stdout(&out).contains("put    0xff0001 = 0xfefefefe"),
        "{}",
        stdout(&out)
    );
    let out = shardstone(&[
        &"journal",
        &"search",
        &db,
        &"--command",
        &"repair",
        &"--hex",
    ]);
    assert!(
        stdout(&out).contains("delete 0x616363743a3037"),
        "{}",
        stdout(&out)
    );
    let out = shardstone(&[&"journal", &"search", &db, &"--command", &"nothing"]);
    expect(&out, 0);
    assert!(
        stdout(&out).contains("no commit matches"),
        "{}",
        stdout(&out)
    );

    // No condition at all is a usage error.
    expect(&shardstone(&[&"journal", &"search", &db]), 2);
}

#[test]
fn journal_show_and_tail() {
    let tmp = TempDir::new("show-tail");
    let db = tmp.join("db");
    let (engine, _) = build(&db);
    let hash = engine.last_commit().1;
    engine.close().unwrap();

    let out = shardstone(&[&"journal", &"show", &db, &"60", &"--json"]);
    expect(&out, 0);
    let v = json(&out);
    assert_eq!(v["commit"], 60);
    assert_eq!(v["hash"], hash.to_string());
    assert_eq!(v["command"], "deposit");

    let out = shardstone(&[&"journal", &"show", &db, &"42", &"--json"]);
    let v = json(&out);
    assert_eq!(v["ops"][0]["op"], "put");
    assert_eq!(v["ops"][0]["key"]["hex"], "ff0001");
    assert_eq!(v["ops"][0]["key"]["text"], Value::Null);

    let out = shardstone(&[&"journal", &"show", &db, &"41"]);
    expect(&out, 0);
    let text = stdout(&out);
    assert!(text.starts_with("commit 41: repair\n"), "{text}");
    assert!(text.contains("chain hash:"), "{text}");

    // A value cut in listings is shown whole by `show`.
    let out = shardstone(&[&"journal", &"show", &db, &"43"]);
    assert!(stdout(&out).contains(&"x".repeat(9000)));
    let out = shardstone(&[&"journal", &"tail", &db, &"--from", &"43", &"--limit", &"1"]);
    expect(&out, 0);
    assert!(stdout(&out).contains("(9000 bytes)"), "{}", stdout(&out));

    let out = shardstone(&[&"journal", &"show", &db, &"61"]);
    expect(&out, 1);
    assert!(
        stderr(&out).contains("not in the journal"),
        "{}",
        stderr(&out)
    );

    let out = shardstone(&[&"journal", &"tail", &db, &"--from", &"55", &"--json"]);
    expect(&out, 0);
    assert_eq!(commits(&json(&out)), vec![55, 56, 57, 58, 59, 60]);
    let out = shardstone(&[
        &"journal", &"tail", &db, &"--from", &"15", &"--limit", &"3", &"--json",
    ]);
    assert_eq!(commits(&json(&out)), vec![15, 16, 17]);
    // Before what the journal holds: it says where it starts.
    let out = shardstone(&[&"journal", &"tail", &db, &"--from", &"3", &"--limit", &"1"]);
    expect(&out, 0);
    assert!(stdout(&out).starts_with("commit 11:"), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("starts at commit 11"),
        "{}",
        stderr(&out)
    );
    let out = shardstone(&[&"journal", &"tail", &db, &"--json"]);
    let all = commits(&json(&out));
    assert_eq!(all.last(), Some(&60));
    assert!(all.windows(2).all(|w| w[1] == w[0] + 1));
}

#[test]
fn metrics_are_prometheus_text_or_json() {
    let tmp = TempDir::new("metrics");
    let db = tmp.join("db");
    closed(&db);
    let out = shardstone(&[&"metrics", &db]);
    expect(&out, 0);
    assert!(
        stdout(&out).contains("# TYPE shardstone_"),
        "{}",
        stdout(&out)
    );
    let out = shardstone(&[&"metrics", &db, &"--json"]);
    expect(&out, 0);
    assert!(json(&out).is_object());
}

#[test]
fn not_a_database_exits_4() {
    let tmp = TempDir::new("not-a-db");
    let empty = tmp.join("empty");
    std::fs::create_dir(&empty).unwrap();
    std::fs::write(empty.join("notes.txt"), b"hello").unwrap();
    let file = tmp.join("file");
    std::fs::write(&file, b"not a directory").unwrap();
    let missing = tmp.join("missing");
    for path in [&empty, &file, &missing] {
        for args in [
            vec![&"stat" as &dyn AsRef<std::ffi::OsStr>, path],
            vec![&"verify", path],
            vec![&"backup", path, &tmp.join("b")],
            vec![&"restore", path, &"--latest", &tmp.join("r")],
            vec![&"journal", &"tail", path],
            vec![&"journal", &"show", path, &"1"],
            vec![&"journal", &"search", path, &"--key", &"k"],
            vec![&"metrics", path],
            vec![&"digest", path],
        ] {
            let out = shardstone(&args);
            expect(&out, 4);
            assert!(
                stderr(&out).contains(&path.display().to_string()),
                "{}",
                stderr(&out)
            );
        }
    }
    // Nothing was created where there was nothing.
    assert!(!missing.exists() && !tmp.join("b").exists() && !tmp.join("r").exists());
    let out = shardstone(&[&"verify", &"--json", &missing]);
    expect(&out, 4);
    assert_eq!(json(&out)["kind"], "not_a_database");
    assert_eq!(json(&out)["exit_code"], 4);
}

#[test]
fn a_database_in_use_refuses_what_needs_its_lock_and_serves_the_rest() {
    let tmp = TempDir::new("in-use");
    let db = tmp.join("db");
    let (engine, _) = build(&db);
    let out = shardstone(&[&"backup", &db, &tmp.join("backup")]);
    expect(&out, 5);
    let err = stderr(&out);
    assert!(
        err.contains("in use") && err.contains("Engine::backup"),
        "{err}"
    );
    assert!(
        err.contains(&format!("process {}", std::process::id())),
        "{err}"
    );
    expect(&shardstone(&[&"metrics", &db]), 5);
    let out = shardstone(&[&"backup", &db, &tmp.join("backup"), &"--json"]);
    expect(&out, 5);
    assert_eq!(json(&out)["kind"], "in_use");

    // Read-only without the lock: these work while the engine runs.
    let out = shardstone(&[&"verify", &db]);
    expect(&out, 0);
    assert!(stdout(&out).contains("in use"), "{}", stdout(&out));
    let out = shardstone(&[&"stat", &db, &"--json"]);
    expect(&out, 0);
    assert_eq!(json(&out)["in_use"], true);
    expect(&shardstone(&[&"journal", &"show", &db, &"41"]), 0);

    // A restore reads its source under a shared lock: a writer excludes it.
    expect(
        &shardstone(&[&"restore", &db, &"--latest", &tmp.join("r")]),
        5,
    );
    engine.close().unwrap();
    expect(&shardstone(&[&"backup", &db, &tmp.join("backup")]), 0);
}

#[test]
fn help_lists_the_exit_codes_and_bad_arguments_exit_2() {
    let out = shardstone(&[&"--help"]);
    expect(&out, 0);
    assert!(stdout(&out).contains("Exit codes:"), "{}", stdout(&out));
    let out = shardstone(&[&"verify", &"--help"]);
    assert!(stdout(&out).contains("5  in use"), "{}", stdout(&out));
    expect(&shardstone(&[&"restore", &"a", &"b"]), 2);
    expect(
        &shardstone(&[&"restore", &"a", &"b", &"--latest", &"--to-commit", &"3"]),
        2,
    );
    expect(&shardstone(&[&"no-such-command"]), 2);
    let out = shardstone(&[&"journal", &"search", &"dir", &"--json"]);
    expect(&out, 2);
    assert_eq!(json(&out)["kind"], "bad_arguments");
    expect(
        &shardstone(&[&"journal", &"show", &"dir", &"not-a-number"]),
        2,
    );
}

#[test]
fn restore_and_search_by_time() {
    let tmp = TempDir::new("by-time");
    let db = tmp.join("db");
    let engine = Engine::open_with(&db, opts()).unwrap();
    // Two batches a tick of the coarse clock apart (commit times come from it).
    for (tag, n) in [("a", 10u32), ("b", 10)] {
        for i in 0..n {
            engine
                .run(tag, |tx| tx.put(format!("{tag}{i}").as_bytes(), b"v"))
                .unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(60));
    }
    let a_digest = {
        // The state after batch a, from a restore by commit.
        engine.close().unwrap();
        let at10 = tmp.join("at-10");
        expect(
            &shardstone(&[&"restore", &db, &"--to-commit", &"10", &at10]),
            0,
        );
        let e = Engine::open_with(&at10, opts()).unwrap();
        e.snapshot().state_digest().unwrap().to_string()
    };
    // The time of commit 10, as `journal show` prints it, is a valid --to-time.
    let out = shardstone(&[&"journal", &"show", &db, &"10", &"--json"]);
    expect(&out, 0);
    let t10 = json(&out)["time"].as_str().unwrap().to_owned();
    let out = shardstone(&[&"journal", &"show", &db, &"10"]);
    assert!(
        stdout(&out).contains(&format!("time:            {t10}")),
        "{}",
        stdout(&out)
    );

    let dest = tmp.join("at-time");
    let out = shardstone(&[&"restore", &db, &"--to-time", &t10, &dest, &"--json"]);
    expect(&out, 0);
    assert_eq!(json(&out)["commit"], 10);
    let out = shardstone(&[&"digest", &dest, &"--json"]);
    assert_eq!(json(&out)["digest"], a_digest.as_str());

    // Search by time: --since the time of commit 11 gives batch b exactly.
    let out = shardstone(&[&"journal", &"show", &db, &"11", &"--json"]);
    let t11 = json(&out)["time"].as_str().unwrap().to_owned();
    let out = shardstone(&[&"journal", &"search", &db, &"--since", &t11, &"--json"]);
    expect(&out, 0);
    assert_eq!(commits(&json(&out)), (11..=20).collect::<Vec<_>>());
    let out = shardstone(&[&"journal", &"search", &db, &"--until", &t10, &"--json"]);
    assert_eq!(commits(&json(&out)), (1..=10).collect::<Vec<_>>());

    // A time that is not one, and a time before every commit.
    expect(
        &shardstone(&[&"restore", &db, &"--to-time", &"yesterday", &tmp.join("x")]),
        2,
    );
    let out = shardstone(&[
        &"restore",
        &db,
        &"--to-time",
        &"2000-01-01T00:00:00Z",
        &tmp.join("y"),
        &"--json",
    ]);
    expect(&out, 0);
    assert_eq!(json(&out)["commit"], 0, "before the first commit: empty");
}
