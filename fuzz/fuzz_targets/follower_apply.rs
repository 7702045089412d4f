//! A follower applying a sequence of encoded records (u16 length prefixes, see
//! `split_records`): each is applied as given, and, if that is refused, again
//! rewritten to continue the follower's chain (`chain_onto`) so that the ops
//! reach the store. A refused record changes nothing; an applied one moves the
//! follower's last commit to it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardstone::{CommitRecord, Engine};
use shardstone_fuzz::{chain_onto, options, read_everything, split_records};

fuzz_target!(|data: &[u8]| {
    let follower = Engine::in_memory_follower(options()).expect("an in-memory follower");
    for bytes in split_records(data) {
        let before = follower.last_commit();
        let Ok(rec) = CommitRecord::decode(bytes) else {
            continue;
        };
        match follower.apply(&rec) {
            Ok(()) => assert_eq!(follower.last_commit(), (rec.commit_id, rec.hash)),
            Err(_) => {
                assert_eq!(
                    follower.last_commit(),
                    before,
                    "a refused apply changed the chain"
                );
                let mut chained = bytes.to_vec();
                chain_onto(&mut chained, before.0.get(), &before.1 .0);
                let Ok(rec) = CommitRecord::decode(&chained) else {
                    continue;
                };
                match follower.apply(&rec) {
                    Ok(()) => assert_eq!(follower.last_commit(), (rec.commit_id, rec.hash)),
                    Err(_) => assert_eq!(follower.last_commit(), before),
                }
            }
        }
    }
    read_everything(&follower);
});
