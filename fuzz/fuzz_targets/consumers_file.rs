//! The consumers file (named consumers' retention holds): the input replaces
//! that of the seed database (`build_database`), which is opened for writing
//! (holds are loaded and written back only then) and read through; also tried
//! with its checksum line recomputed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardstone_fuzz::{fix_consumers, open_and_read, variants, Template, CONSUMERS};
use std::sync::OnceLock;

static TEMPLATE: OnceLock<Template> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let template = TEMPLATE.get_or_init(|| Template::new("consumers_file"));
    for file in variants(data, fix_consumers) {
        let dir = template.copy_with(CONSUMERS, &file);
        let _ = open_and_read(&dir, false, false);
    }
});
