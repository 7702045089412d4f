//! Loom models of shardstone's concurrency protocols live in `tests/`; this crate
//! has no code of its own. Run them with
//! `RUSTFLAGS="--cfg loom" cargo test -p shardstone-loom-tests --release`.
