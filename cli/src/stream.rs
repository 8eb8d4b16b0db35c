//! The record streams of the `cairn run` workloads, defined exactly as the Flink comparison job
//! generates them (the definition is the block below), so that Cairn and Flink see the same
//! records.
//!
//! All integer math is 64-bit and wrapping; `>>` on `u64` is a logical shift.
//!
//! ```text
//! mix64(z):  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9; z = (z ^ (z >> 27)) * 0x94d049bb133111eb; z ^ (z >> 31)
//! key_for(g, K, seed) = mix64(g ^ (seed * 0x9E3779B97F4A7C15)) mod K        # g = record index 0..N-1
//! payload(k, V): b[0..8] = k big-endian; x = mix64(k + 1);
//!                for j in 8..V { if j % 8 == 0 { x = mix64(x) }; b[j] = (x >> 8*(j % 8)) & 0xff }
//! ```
//!
//! On top of these, the mixed workload draws further per-record numbers from [`RecordRng`]
//! (SplitMix64 seeded with `g ^ seed * φ`) and, for skewed keys, ranks from [`Zipf`]. Every
//! record is a pure function of `(g, seed)`: any thread can compute any record, which is what lets
//! every slot walk the same stream and keep only its own records.

/// The golden-ratio increment of SplitMix64 (`φ`), also used to spread the seed.
pub const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's finalizer (Stafford's variant 13): `mix64` of the module doc's definition.
#[inline]
pub fn mix64(z: u64) -> u64 {
    let z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The per-record starting state: `g ^ (seed * φ)`.
#[inline]
pub fn record_state(g: u64, seed: u64) -> u64 {
    g ^ seed.wrapping_mul(GOLDEN)
}

/// `keyFor(g, K, seed)`: the key of record `g` among `keys` keys (uniform).
///
/// # Panics
/// When `keys == 0` (callers validate `--keys >= 1`).
#[inline]
pub fn key_for(g: u64, keys: u64, seed: u64) -> u64 {
    mix64(record_state(g, seed)) % keys
}

/// `payload(k, V)`: the `len`-byte value of key `k` (written into `out`, which is cleared).
///
/// For `len < 8` only the first `len` bytes of `k`'s big-endian encoding are written.
pub fn payload_into(out: &mut Vec<u8>, k: u64, len: usize) {
    out.clear();
    out.reserve(len);
    let be = k.to_be_bytes();
    out.extend_from_slice(&be[..len.min(8)]);
    let mut x = mix64(k.wrapping_add(1));
    for j in 8..len {
        if j % 8 == 0 {
            x = mix64(x);
        }
        out.push((x >> (8 * (j % 8))) as u8);
    }
}

/// `payload(k, V)` as a new vector.
pub fn payload(k: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    payload_into(&mut out, k, len);
    out
}

/// SplitMix64: `state += φ; mix64(state)`. Seeded per record with [`record_state`], it yields
/// `r_i = mix64(record_state(g, seed) + (i + 1) * φ)` for `i = 0, 1, ...`.
#[derive(Clone, Debug)]
pub struct RecordRng {
    state: u64,
}

impl RecordRng {
    /// The draws of record `g` under `seed`, xored with `salt` to get an independent stream.
    pub fn new(g: u64, seed: u64, salt: u64) -> Self {
        Self {
            state: record_state(g, seed) ^ salt,
        }
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix64(self.state)
    }

    /// A uniform `f64` in `[0, 1)` from the top 53 bits of the next draw.
    #[inline]
    pub fn next_unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// A Zipf distribution over ranks `1..=n` with `P(k) ∝ k^-s`, sampled by rejection-inversion
/// (a continuous envelope `x^-s` inverted in closed form, then an accept test).
///
/// Written here rather than taken from `rand_distr` so that the stream only depends on this file:
/// a dependency upgrade cannot change which keys a seed produces.
#[derive(Clone, Debug)]
pub struct Zipf {
    n: f64,
    s: f64,
    /// Total mass of the envelope.
    t: f64,
    /// `1 / (1 - s)` (unused when `s == 1`).
    q: f64,
}

impl Zipf {
    /// A distribution over `n >= 1` ranks with exponent `s > 0`; `None` otherwise.
    pub fn new(n: u64, s: f64) -> Option<Self> {
        if n == 0 || !(s > 0.0 && s.is_finite()) {
            return None;
        }
        let n = n as f64;
        let (t, q) = if s == 1.0 {
            (1.0 + n.ln(), 0.0)
        } else {
            let q = 1.0 / (1.0 - s);
            ((n.powf(1.0 - s) - s) * q, q)
        };
        Some(Self { n, s, t, q })
    }

    /// Inverse of the envelope's cumulative mass.
    fn inv_cdf(&self, p: f64) -> f64 {
        let pt = p * self.t;
        if pt <= 1.0 {
            pt
        } else if self.s != 1.0 {
            (pt * (1.0 - self.s) + self.s).powf(self.q)
        } else {
            (pt - 1.0).exp()
        }
    }

    /// One rank in `1..=n`.
    pub fn sample(&self, rng: &mut RecordRng) -> u64 {
        loop {
            let inv_b = self.inv_cdf(rng.next_unit());
            let x = (inv_b + 1.0).floor().min(self.n);
            let mut ratio = x.powf(-self.s);
            if x > 1.0 {
                ratio *= inv_b.powf(self.s);
            }
            if rng.next_unit() < ratio {
                return x as u64;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values computed from the module doc's definition with an independent
    /// (Python, arbitrary-precision integers masked to 64 bits) implementation.
    #[test]
    fn mix64_is_pinned() {
        assert_eq!(mix64(0), 0);
        assert_eq!(mix64(1), 0x5692_161d_100b_05e5);
        // The first SplitMix64 output for seed 0: a widely published value.
        assert_eq!(mix64(GOLDEN), 0xe220_a839_7b1d_cdaf);
    }

    #[test]
    fn key_for_is_pinned() {
        let keys: Vec<u64> = (0..4).map(|g| key_for(g, 1_000_000, 42)).collect();
        assert_eq!(keys, [358_542, 507_079, 119_741, 222_842]);
        assert_eq!(key_for(0, 1_000_000, 7), 306_913);
        assert_eq!(key_for(1, 1_000_000, 7), 380_965);
    }

    #[test]
    fn payload_is_pinned() {
        assert_eq!(
            payload(0, 16),
            [
                0, 0, 0, 0, 0, 0, 0, 0, 0x7d, 0x3a, 0x36, 0x0f, 0x09, 0x0e, 0xb4, 0x7a
            ]
        );
        assert_eq!(
            payload(1, 16)[8..],
            [0xa8, 0xfe, 0xa7, 0x6e, 0xe3, 0xd7, 0xea, 0x52]
        );
        let p = payload(5, 24);
        assert_eq!(p[..8], 5u64.to_be_bytes());
        assert_eq!(
            p[8..],
            [
                0x00, 0xa7, 0xd8, 0x35, 0x0d, 0x39, 0x89, 0x30, 0xc9, 0xcc, 0x17, 0xd0, 0x01, 0x1b,
                0xdf, 0x89
            ]
        );
        // Byte j of the tail is byte j % 8 (little-endian) of the j/8-th mix64 iterate.
        let x = mix64(mix64(1));
        assert_eq!(payload(0, 9)[8], x as u8);
        assert_eq!(payload(7, 3), [0, 0, 0]);
    }

    #[test]
    fn record_rng_is_splitmix64() {
        let mut r = RecordRng::new(0, 0, 0);
        assert_eq!(r.next_u64(), 0xe220_a839_7b1d_cdaf);
        let u = RecordRng::new(3, 42, 0).next_unit();
        assert!((0.0..1.0).contains(&u));
    }

    #[test]
    fn zipf_stays_in_range_and_is_skewed() {
        assert!(Zipf::new(0, 1.0).is_none());
        assert!(Zipf::new(10, 0.0).is_none());
        assert!(Zipf::new(10, f64::NAN).is_none());
        for s in [0.5, 0.99, 1.0, 1.5] {
            let z = Zipf::new(1000, s).expect("valid");
            let mut counts = vec![0u32; 1001];
            for g in 0..20_000 {
                let k = z.sample(&mut RecordRng::new(g, 42, 1));
                assert!((1..=1000).contains(&k), "s={s} k={k}");
                counts[k as usize] += 1;
            }
            assert!(
                counts[1] > counts[100],
                "s={s}: {} vs {}",
                counts[1],
                counts[100]
            );
        }
        // n = 1 always gives rank 1.
        let z = Zipf::new(1, 0.99).expect("valid");
        assert_eq!(z.sample(&mut RecordRng::new(9, 42, 0)), 1);
    }
}
