//! `Snapshot::state_digest`: an order-independent digest of a whole snapshot, so
//! two replicas can be compared at the same commit id while both serve traffic
//! (seed 000: a hand-repaired replica quietly spread corruption).

use crate::error::Result;
use crate::store::Snapshot;
use std::fmt;

/// The digest of every key and value of a snapshot: the sum, in four 64-bit
/// lanes, of BLAKE3 over each entry (key length, key, value). A sum does not
/// depend on the order entries are visited in, and any changed, added or removed
/// entry changes it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct StateDigest {
    /// The summed lanes, little-endian.
    pub digest: [u8; 32],
    /// Entries digested.
    pub entries: u64,
}

impl fmt::Display for StateDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.digest {
            write!(f, "{b:02x}")?;
        }
        write!(f, " ({} entries)", self.entries)
    }
}

impl fmt::Debug for StateDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StateDigest({self})")
    }
}

impl Snapshot {
    /// An order-independent digest of every key and value in this snapshot.
    /// It reads the snapshot like any scan: writers are never stopped.
    ///
    /// ```
    /// let a = shardstone::Engine::in_memory()?;
    /// let b = shardstone::Engine::in_memory()?;
    /// a.run("w", |tx| { tx.put(b"x", b"1")?; tx.put(b"y", b"2") })?;
    /// b.run("w", |tx| tx.put(b"y", b"2"))?;
    /// b.run("w", |tx| tx.put(b"x", b"1"))?;
    /// assert_eq!(a.snapshot().state_digest()?, b.snapshot().state_digest()?);
    /// b.run("w", |tx| tx.put(b"x", b"3"))?;
    /// assert_ne!(a.snapshot().state_digest()?, b.snapshot().state_digest()?);
    /// # Ok::<(), shardstone::Error>(())
    /// ```
    pub fn state_digest(&self) -> Result<StateDigest> {
        let mut lanes = [0u64; 4];
        let mut entries = 0u64;
        for item in self.range(..) {
            let (key, value) = item?;
            let mut h = blake3::Hasher::new();
            h.update(&(key.len() as u64).to_le_bytes());
            h.update(&key);
            h.update(&value);
            let out = h.finalize();
            for (i, lane) in lanes.iter_mut().enumerate() {
                let word = u64::from_le_bytes(
                    out.as_bytes()[i * 8..i * 8 + 8]
                        .try_into()
                        .expect("8 bytes"),
                );
                *lane = lane.wrapping_add(word);
            }
            entries += 1;
        }
        let mut digest = [0u8; 32];
        for (i, lane) in lanes.iter().enumerate() {
            digest[i * 8..i * 8 + 8].copy_from_slice(&lane.to_le_bytes());
        }
        Ok(StateDigest { digest, entries })
    }
}
