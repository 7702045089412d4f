//! A checkpoint file (in the compact form of `expand_checkpoint`: the header
//! block's zero padding left out), named after the commit id its header gives
//! (`checkpoint-<20 digits>.ckpt`, commit 1 when the header is too short), beside
//! a manifest that names it. Opened read-only and read through; also tried with
//! its header and block checksums recomputed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardstone_fuzz::{
    checkpoint_header, checkpoint_name, expand_checkpoint, fix_checkpoint, manifest_bytes,
    open_and_read, variants, Scratch,
};
use std::sync::OnceLock;

static SCRATCH: OnceLock<Scratch> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let scratch = SCRATCH.get_or_init(|| Scratch::new("checkpoint_file"));
    for file in variants(&expand_checkpoint(data), |b| fix_checkpoint(b)) {
        let (id, hash) = checkpoint_header(&file).unwrap_or((1, [0; 32]));
        let dir = scratch.reset("db");
        std::fs::write(
            dir.join("manifest"),
            manifest_bytes((id, hash), (id, hash), &[]),
        )
        .unwrap();
        std::fs::create_dir(dir.join("journal")).unwrap();
        std::fs::write(dir.join(checkpoint_name(id)), &file).unwrap();
        let _ = open_and_read(&dir, true, false);
    }
});
