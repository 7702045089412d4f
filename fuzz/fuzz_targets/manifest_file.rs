//! The manifest: the input replaces the manifest of the seed database
//! (`build_database`), which is opened read-only and read through; also tried
//! with its checksum recomputed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardstone_fuzz::{fix_manifest, open_and_read, variants, Template, MANIFEST};
use std::sync::OnceLock;

static TEMPLATE: OnceLock<Template> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let template = TEMPLATE.get_or_init(|| Template::new("manifest_file"));
    for file in variants(data, |b| fix_manifest(b)) {
        let dir = template.copy_with(MANIFEST, &file);
        let _ = open_and_read(&dir, true, false);
    }
});
