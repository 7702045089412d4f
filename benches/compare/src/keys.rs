//! Key and value generation, identical for every engine: 16-byte keys, 100-byte
//! values, a seeded PRNG and a Zipf sampler (the same formats as the library's
//! criterion benches in `benches/common`, so the numbers can be set side by side).

/// Key length in bytes.
pub const KEY_LEN: usize = 16;
/// Value length in bytes.
pub const VALUE_LEN: usize = 100;

/// SplitMix64: tiny, fast, fully seeded.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator with its own stream for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; the bias is negligible here).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Zipf(θ) over ranks `0..n` (rank 0 the most popular), by the method of Gray et
/// al., "Quickly generating billion-record synthetic databases" (SIGMOD 1994), as
/// YCSB does; ranks are mapped to items through a fixed random permutation, so
/// the hot items are scattered over the key space rather than sharing a page.
#[derive(Clone, Debug)]
pub struct Zipf {
    n: u64,
    alpha: f64,
    zetan: f64,
    eta: f64,
    half_pow_theta: f64,
    items: Vec<u32>,
}

impl Zipf {
    /// A sampler over `n` items (`2 <= n < 2^32`, `0 < θ < 1`).
    pub fn new(n: u64, theta: f64, seed: u64) -> Zipf {
        assert!((2..1 << 32).contains(&n) && theta > 0.0 && theta < 1.0);
        let zeta = |n: u64| (1..=n).map(|i| (i as f64).powf(-theta)).sum::<f64>();
        let zetan = zeta(n);
        let zeta2 = zeta(2);
        Zipf {
            n,
            alpha: 1.0 / (1.0 - theta),
            zetan,
            eta: (1.0 - (2.0 / n as f64).powf(1.0 - theta)) / (1.0 - zeta2 / zetan),
            half_pow_theta: 0.5f64.powf(theta),
            items: permutation(n, seed),
        }
    }

    /// An item number in `0..n`, Zipf-distributed by popularity.
    pub fn sample(&self, rng: &mut Rng) -> u64 {
        let u = rng.unit();
        let uz = u * self.zetan;
        let rank = if uz < 1.0 {
            0
        } else if uz < 1.0 + self.half_pow_theta {
            1
        } else {
            let r = (self.n as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
            r.min(self.n - 1)
        };
        u64::from(self.items[rank as usize])
    }
}

/// A seeded random permutation of `0..n` (Fisher–Yates).
fn permutation(n: u64, seed: u64) -> Vec<u32> {
    let mut p: Vec<u32> = (0..n as u32).collect();
    let mut rng = Rng::new(seed);
    for i in (1..p.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        p.swap(i, j);
    }
    p
}

/// The key of item `i`: `"key"` and 13 decimal digits, so key order is `i` order.
pub fn key(i: u64) -> [u8; KEY_LEN] {
    let mut k = *b"key0000000000000";
    let mut n = i;
    for b in k[3..].iter_mut().rev() {
        *b = b'0' + (n % 10) as u8;
        n /= 10;
    }
    debug_assert_eq!(n, 0, "item number too large for the key format");
    k
}

/// `prefix` and the decimal digits of `n`, zero-padded to [`KEY_LEN`] bytes.
fn numbered(prefix: &[u8], n: u64) -> [u8; KEY_LEN] {
    let mut k = [b'0'; KEY_LEN];
    k[..prefix.len()].copy_from_slice(prefix);
    let mut n = n;
    for b in k[prefix.len()..].iter_mut().rev() {
        *b = b'0' + (n % 10) as u8;
        n /= 10;
    }
    debug_assert_eq!(n, 0, "number too large for the key format");
    k
}

/// Whether `k` is an item key made by [`key`] (the preloaded items; W7 and the
/// counter workload add keys of their own beside them).
pub fn is_item(k: &[u8]) -> bool {
    k.len() == KEY_LEN && k.starts_with(b"key")
}

/// W7's key of order `id`: `"order:"` and 10 decimal digits, in id order.
pub fn order_key(id: u64) -> [u8; KEY_LEN] {
    numbered(b"order:", id)
}

/// W7's key of the order count of account item `i`: `"cnt:"` and 12 digits.
pub fn account_count_key(i: u64) -> [u8; KEY_LEN] {
    numbered(b"cnt:", i)
}

/// A value: an 8-byte little-endian counter, then filler derived from `seed`.
pub fn value(counter: u64, seed: u64) -> [u8; VALUE_LEN] {
    let mut v = [0u8; VALUE_LEN];
    v[..8].copy_from_slice(&counter.to_le_bytes());
    let fill = seed.to_le_bytes();
    for (i, b) in v[8..].iter_mut().enumerate() {
        *b = fill[i % 8] ^ (i as u8);
    }
    v
}

/// The counter stored in a value made by [`value`] (0 when it is too short).
pub fn counter(v: &[u8]) -> u64 {
    v.get(..8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_in_item_order() {
        assert_eq!(&key(42), b"key0000000000042");
        assert!(key(9) < key(10));
    }

    #[test]
    fn other_keys_are_not_items() {
        assert_eq!(&order_key(42), b"order:0000000042");
        assert_eq!(&account_count_key(7), b"cnt:000000000007");
        assert!(is_item(&key(3)));
        assert!(!is_item(&order_key(3)) && !is_item(b"counter:hot"));
    }

    #[test]
    fn values_carry_their_counter() {
        assert_eq!(counter(&value(7, 3)), 7);
    }

    #[test]
    fn zipf_stays_in_range_and_favours_its_top_item() {
        let z = Zipf::new(1000, 0.99, 1);
        let mut rng = Rng::new(2);
        let mut hits = vec![0u32; 1000];
        for _ in 0..100_000 {
            hits[z.sample(&mut rng) as usize] += 1;
        }
        let top = *hits.iter().max().unwrap();
        assert!(top > 10_000, "the hottest item gets over 10% ({top})");
    }
}
