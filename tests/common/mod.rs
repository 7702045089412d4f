//! Helpers shared by the integration tests: a seeded PRNG (no dev-dependencies),
//! value encodings, and scan/compare helpers that keep failure output readable
//! even when values are megabytes long.

#![allow(dead_code)]

use shardstone::{Engine, Options, Snapshot};
use std::collections::BTreeMap;
use std::ops::Bound;

/// SplitMix64: tiny, fast, deterministic; good enough to drive tests.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // Mix the seed once so that small seeds (0, 1, 2, ...) diverge immediately.
        let mut r = Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B);
        r.next_u64();
        r
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0);
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Uniform in `lo..=hi`.
    pub fn range_incl(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    pub fn index(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        let n = rest.len();
        rest.copy_from_slice(&last[..n]);
    }

    /// Random bytes, of a length uniform in `lo..=hi`.
    pub fn bytes_between(&mut self, lo: usize, hi: usize) -> Vec<u8> {
        let len = self.range_incl(lo as u64, hi as u64) as usize;
        self.bytes(len)
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.fill(&mut v);
        v
    }
}

pub fn enc(n: u64) -> [u8; 8] {
    n.to_le_bytes()
}

pub fn dec(v: &[u8]) -> u64 {
    u64::from_le_bytes(v[..8].try_into().expect("an 8-byte prefix"))
}

pub fn engine_with(page_size: usize) -> Engine {
    Engine::in_memory_with(Options {
        page_size,
        ..Default::default()
    })
    .expect("valid options")
}

pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// Both ends of a range over borrowed keys.
pub type Bounds<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

/// Renders a key for failure messages: text when printable, hex otherwise,
/// shortened. Lazy: nothing is formatted unless the message is.
pub fn show(key: &[u8]) -> Show<'_> {
    Show(key)
}

pub struct Show<'a>(&'a [u8]);

impl std::fmt::Display for Show<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let key = self.0;
        let s: String = if key.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
            String::from_utf8_lossy(key).into_owned()
        } else {
            key.iter().map(|b| format!("{b:02x}")).collect()
        };
        if s.len() > 80 {
            write!(f, "{}..({} bytes)", &s[..80], key.len())
        } else {
            f.write_str(&s)
        }
    }
}

/// Asserts two entry lists are equal; on mismatch names the first difference
/// instead of dumping (possibly huge) values.
#[track_caller]
pub fn assert_entries(what: &str, got: &[(Vec<u8>, Vec<u8>)], want: &[(Vec<u8>, Vec<u8>)]) {
    let n = got.len().min(want.len());
    for i in 0..n {
        let (gk, gv) = &got[i];
        let (wk, wv) = &want[i];
        if gk != wk {
            panic!(
                "{what}: entry {i}: key {} but expected {} (got {} entries, expected {})",
                show(gk),
                show(wk),
                got.len(),
                want.len()
            );
        }
        if gv != wv {
            let at = gv
                .iter()
                .zip(wv.iter())
                .position(|(a, b)| a != b)
                .unwrap_or(gv.len().min(wv.len()));
            panic!(
                "{what}: entry {i} key {}: value of {} bytes but expected {} bytes (first difference at byte {at})",
                show(gk),
                gv.len(),
                wv.len()
            );
        }
    }
    if got.len() != want.len() {
        let extra = if got.len() > n {
            format!("first extra key {}", show(&got[n].0))
        } else {
            format!("first missing key {}", show(&want[n].0))
        };
        panic!(
            "{what}: got {} entries, expected {}; {extra}",
            got.len(),
            want.len()
        );
    }
}

/// Asserts an optional value equals the expectation without dumping it.
#[track_caller]
pub fn assert_value(what: impl std::fmt::Display, got: Option<&[u8]>, want: Option<&[u8]>) {
    match (got, want) {
        (None, None) => {}
        (Some(g), Some(w)) if g == w => {}
        (Some(g), Some(w)) => {
            let at = g
                .iter()
                .zip(w.iter())
                .position(|(a, b)| a != b)
                .unwrap_or(g.len().min(w.len()));
            panic!(
                "{what}: value of {} bytes, expected {} bytes (first difference at byte {at})",
                g.len(),
                w.len()
            );
        }
        (g, w) => panic!(
            "{what}: got {}, expected {}",
            g.map_or("nothing".to_string(), |v| format!(
                "a value of {} bytes",
                v.len()
            )),
            w.map_or("nothing".to_string(), |v| format!(
                "a value of {} bytes",
                v.len()
            )),
        ),
    }
}

/// Every entry of a snapshot, forward.
pub fn scan(snap: &Snapshot) -> Entries {
    snap.range(..)
        .map(|r| r.map(|(k, v)| (k, v.into_vec())).expect("scan"))
        .collect()
}

/// Every entry of a snapshot, walked backwards and returned in ascending order.
pub fn scan_rev(snap: &Snapshot) -> Entries {
    let mut v: Entries = snap
        .range(..)
        .rev()
        .map(|r| r.map(|(k, v)| (k, v.into_vec())).expect("scan"))
        .collect();
    v.reverse();
    v
}

pub fn model_entries(m: &BTreeMap<Vec<u8>, Vec<u8>>) -> Entries {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// Checks a snapshot against a model exactly: full forward and reverse scans,
/// compared item by item as they stream (no copies of the whole state).
#[track_caller]
pub fn assert_snapshot_is(what: &str, snap: &Snapshot, model: &BTreeMap<Vec<u8>, Vec<u8>>) {
    for reverse in [false, true] {
        let dir = if reverse { "reverse" } else { "forward" };
        let mut got = snap.range(..);
        let mut want = model.iter();
        for i in 0.. {
            let (g, w) = if reverse {
                (got.next_back(), want.next_back())
            } else {
                (got.next(), want.next())
            };
            match (g, w) {
                (None, None) => break,
                (Some(Err(e)), _) => panic!("{what} ({dir} scan): item {i}: error {e}"),
                (Some(Ok((k, v))), Some((wk, wv))) => {
                    assert!(
                        k == *wk,
                        "{what} ({dir} scan): item {i}: key {} but expected {} ({} entries expected)",
                        show(&k),
                        show(wk),
                        model.len()
                    );
                    assert_value(
                        format_args!("{what} ({dir} scan): item {i} ({})", show(&k)),
                        Some(&v),
                        Some(wv),
                    );
                }
                (Some(Ok((k, _))), None) => {
                    panic!(
                        "{what} ({dir} scan): item {i}: unexpected key {} ({} entries expected)",
                        show(&k),
                        model.len()
                    )
                }
                (None, Some((wk, _))) => {
                    panic!("{what} ({dir} scan): ended after {i} items, expected key {} next ({} entries expected)", show(wk), model.len())
                }
            }
        }
    }
}

/// The entries of `model` within the bounds, with the engine's convention that an
/// empty or inverted range is simply empty (BTreeMap would panic on some of those).
pub fn model_range<'m>(
    model: &'m BTreeMap<Vec<u8>, Vec<u8>>,
    lo: Bound<&[u8]>,
    hi: Bound<&[u8]>,
) -> Vec<(&'m Vec<u8>, &'m Vec<u8>)> {
    let key_of = |b: Bound<&[u8]>| match b {
        Bound::Included(k) | Bound::Excluded(k) => Some(k.to_vec()),
        Bound::Unbounded => None,
    };
    if let (Some(l), Some(h)) = (key_of(lo), key_of(hi)) {
        if l > h
            || (l == h && !(matches!(lo, Bound::Included(_)) && matches!(hi, Bound::Included(_))))
        {
            return Vec::new();
        }
    }
    model.range::<[u8], _>((lo, hi)).collect()
}

/// Bound over an owned key, borrowed.
pub fn bound_ref(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match b {
        Bound::Included(k) => Bound::Included(k.as_slice()),
        Bound::Excluded(k) => Bound::Excluded(k.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// A directory under the system temp dir, unique to this process and call,
/// removed (with everything in it) when dropped.
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("shardstone-test-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        TempDir(dir)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `f` over `items` on up to `per_cpu` threads per CPU (2 to 8 threads in
/// all), each taking the next item; results in item order.
pub fn par_map<T: Sync, R: Send>(
    items: &[T],
    per_cpu: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get() * per_cpu)
        .clamp(2, 8)
        .min(items.len().max(1));
    let next = AtomicUsize::new(0);
    let results: std::sync::Mutex<Vec<Option<R>>> =
        std::sync::Mutex::new((0..items.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else { break };
                let r = f(item);
                results.lock().unwrap()[i] = Some(r);
            });
        }
    });
    results
        .into_inner()
        .unwrap()
        .into_iter()
        .map(|r| r.expect("every item ran"))
        .collect()
}

/// A caught panic (from the engine or a failed assertion) as a string.
pub fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic".to_owned())
}

/// For each journal shard of an engine opened with `opts` (its `journal_shards`
/// and `numa`), a CPU this thread may run on whose commits append to that shard,
/// read from the engine's own placement (a shard's CPU starts its block of
/// CPUs); `None` when some shard's CPU is outside this thread's affinity mask.
pub fn cpus_for_shards(opts: &Options) -> Option<Vec<usize>> {
    let dir = TempDir::new("cpus-for-shards");
    let probe = Options {
        durability: shardstone::Durability::Durable,
        ..opts.clone()
    };
    let engine = Engine::open_with(dir.path(), probe).ok()?;
    let cpus: Vec<usize> = engine.placement().shards.iter().map(|s| s.cpu).collect();
    drop(engine);
    // SAFETY: a zeroed cpu_set_t is a valid empty set, and its size is passed.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: `set` is a valid cpu_set_t of `size` bytes.
    if unsafe { libc::sched_getaffinity(0, size, &mut set) } != 0 {
        return None;
    }
    // SAFETY: each `cpu` is below CPU_SETSIZE (checked first), `set` is initialized.
    let allowed =
        |cpu: usize| cpu < libc::CPU_SETSIZE as usize && unsafe { libc::CPU_ISSET(cpu, &set) };
    (cpus.len() == opts.journal_shards && cpus.iter().all(|&c| allowed(c))).then_some(cpus)
}

/// Moves the calling thread onto `cpu`, and so onto that CPU's journal shard.
pub fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; `cpu` < CPU_SETSIZE.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(cpu, &mut set) };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: `set` is a valid cpu_set_t of `size` bytes.
    let r = unsafe { libc::sched_setaffinity(0, size, &set) };
    assert_eq!(r, 0, "sched_setaffinity to CPU {cpu}");
}

/// Runs command `a_name` with `a` on one thread and, during A's first attempt only
/// (at the point where `a` calls the pause function), command B with `b` on another
/// thread to completion. Returns A's result, how many times A's closure ran, and
/// B's result: a deterministic interleaving, B commits between A's reads and A's
/// commit.
pub fn interleave<TA: Send, TB: Send>(
    engine: &Engine,
    a_name: &str,
    mut a: impl FnMut(&mut shardstone::Tx<'_>, &mut dyn FnMut()) -> shardstone::Result<TA> + Send,
    b_name: &str,
    mut b: impl FnMut(&mut shardstone::Tx<'_>) -> shardstone::Result<TB> + Send,
) -> (TA, u32, TB) {
    use std::sync::mpsc;
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        let b_thread = s.spawn(move || {
            go_rx.recv().expect("A asks B to run");
            let r = engine.run(b_name, &mut b).expect("B commits");
            done_tx.send(()).unwrap();
            r
        });
        let mut attempts = 0u32;
        let mut paused = false;
        let ra = engine
            .run(a_name, |tx| {
                attempts += 1;
                let mut pause = || {
                    if !paused {
                        paused = true;
                        go_tx.send(()).unwrap();
                        // A deadlock guard, not a timing assertion: B must not wait for A.
                        done_rx
                            .recv_timeout(std::time::Duration::from_secs(120))
                            .expect("B could not finish while A was paused inside its command");
                    }
                };
                a(tx, &mut pause)
            })
            .expect("A commits");
        assert!(paused, "A paused for B");
        let rb = b_thread.join().unwrap();
        (ra, attempts, rb)
    })
}

/// Copies a database directory (its files and `journal/`), without the lock.
pub fn copy_db(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to.join("journal")).unwrap();
    for sub in ["", "journal", "pitr"] {
        if !from.join(sub).is_dir() {
            continue;
        }
        std::fs::create_dir_all(to.join(sub)).unwrap();
        for entry in std::fs::read_dir(from.join(sub)).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name();
            if entry.file_type().unwrap().is_file() && name != "LOCK" {
                std::fs::copy(entry.path(), to.join(sub).join(&name)).unwrap();
            }
        }
    }
}
