//! `CommitRecord::decode` on arbitrary bytes (what a follower receives from the
//! network): never a panic, and a record that decodes encodes to bytes that
//! decode to the same record.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardstone::CommitRecord;

fuzz_target!(|data: &[u8]| {
    let Ok(rec) = CommitRecord::decode(data) else {
        return;
    };
    // A decoded record may still be refused by encode (a limit it breaks); it
    // must say so with an error.
    let Ok(bytes) = rec.encode() else {
        return;
    };
    let again = CommitRecord::decode(&bytes).expect("encode's output decodes");
    assert_eq!(again, rec, "encode then decode changed the record");
    assert_eq!(
        again.encode().expect("encodes twice"),
        bytes,
        "encode is not stable"
    );
});
