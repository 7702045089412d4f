//! A journal segment file: the input is `journal/s0000-0000000000.log` beside
//! the manifest of an empty database. Opened read-only (strict), then for
//! writing with `salvage`, reading everything each time it opens; the input
//! is also tried with its frame checksums recomputed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardstone_fuzz::{empty_manifest, fix_segment, open_and_read, variants, Scratch, SEGMENT};
use std::sync::OnceLock;

static SCRATCH: OnceLock<Scratch> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let scratch = SCRATCH.get_or_init(|| Scratch::new("segment_file"));
    for file in variants(data, |b| fix_segment(b)) {
        for (read_only, salvage) in [(true, false), (false, true)] {
            let dir = scratch.reset("db");
            std::fs::write(dir.join("manifest"), empty_manifest()).unwrap();
            std::fs::create_dir(dir.join("journal")).unwrap();
            std::fs::write(dir.join("journal").join(SEGMENT), &file).unwrap();
            let _ = open_and_read(&dir, read_only, salvage);
        }
    }
});
