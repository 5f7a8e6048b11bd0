//! Montgomery multiplication and squaring for RSA public-key operations,
//! written for Envoy's V8.
//!
//! crypto-bigint's Montgomery multiplication (FIOS, one carry chain through
//! every limb product) was 91% of an uncached verification in V8; wasm has no
//! add-with-carry, so each step of that chain costs several instructions.
//! Here the numbers are 32-bit limbs and every product is split into its low
//! and high halves, added into two separate arrays of 64-bit column sums
//! ([`Columns`]): no carry chain, so LLVM vectorises the loops with wasm
//! SIMD (`+simd128`, see `.cargo/config.toml`), and squaring computes each
//! cross product once. Carries are settled once per reduction row
//! (HAC 14.32). In V8 that makes `s^65537 mod n` for RSA-2048 about 75 µs
//! instead of about 122 µs.
//!
//! crypto-bigint still computes the per-key constants (`-n⁻¹ mod 2³²` and
//! `R² mod n`); the modulus is fixed by the key and public, so nothing here
//! needs to be constant-time.
//!
//! Column sums stay far below 2⁶⁴: each of a column's two sums receives at
//! most `3·LIMBS + 1` values below 2³² (a product or reduction row adds one,
//! the doubling of a square counts twice), so a column, both sums and the
//! carry from below together, stays under 2⁴³ for 128 limbs.

/// Limbs of the largest modulus handled (4096 bits).
pub(super) const MAX_LIMBS: usize = 128;

const LOW: u64 = 0xffff_ffff;

/// A modulus with its Montgomery constants, `R = 2^(32·limbs)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Modulus {
    /// `n`, little-endian 32-bit limbs, odd, `1 ≤ limbs ≤ MAX_LIMBS`.
    n: Vec<u32>,
    /// `-n⁻¹ mod 2³²`.
    n_neg_inv: u32,
    /// `R² mod n`, little-endian limbs.
    r2: Vec<u32>,
}

impl Modulus {
    /// `None` unless `n` is odd, `r2` has as many limbs and there are
    /// `1..=MAX_LIMBS` of them; `n_neg_inv` is checked against `n`.
    pub(super) fn new(n: Vec<u32>, n_neg_inv: u32, r2: Vec<u32>) -> Option<Self> {
        let first = *n.first()?;
        let fits = n.len() <= MAX_LIMBS && r2.len() == n.len() && first & 1 == 1;
        (fits && first.wrapping_mul(n_neg_inv) == u32::MAX).then_some(Self { n, n_neg_inv, r2 })
    }

    pub(super) fn limbs(&self) -> usize {
        self.n.len()
    }

    /// `s^65537 mod n` for `s < n` (little-endian limbs, as many as `n`):
    /// sixteen squarings and two multiplications (into and out of Montgomery
    /// form; the last one multiplies by `s` itself, which also leaves it).
    /// `None` when `s` has the wrong number of limbs.
    pub(super) fn pow_f4(&self, s: &[u32]) -> Option<Vec<u32>> {
        let l = self.n.len();
        if s.len() != l {
            return None;
        }
        let mut x = [0u32; MAX_LIMBS];
        let mut y = [0u32; MAX_LIMBS];
        let (x, y) = (x.get_mut(..l)?, y.get_mut(..l)?);
        let columns = &mut Columns::new(l);
        self.mul(s, &self.r2, columns, x); // s·R
        for _ in 0..8 {
            self.square(x, columns, y);
            self.square(y, columns, x);
        } // s^65536·R
        self.mul(x, s, columns, y); // s^65537
        Some(y.to_vec())
    }

    /// `out = x·y·R⁻¹ mod n`.
    fn mul(&self, x: &[u32], y: &[u32], columns: &mut Columns, out: &mut [u32]) {
        columns.clear();
        for (i, xi) in x.iter().enumerate() {
            columns.add_row(i, *xi, y);
        }
        self.reduce(columns, out);
    }

    /// `out = x²·R⁻¹ mod n`: each cross product once, doubled.
    fn square(&self, x: &[u32], columns: &mut Columns, out: &mut [u32]) {
        columns.clear();
        for (i, xi) in x.iter().enumerate() {
            columns.add_row(2 * i + 1, *xi, &x[i + 1..]);
        }
        columns.double();
        for (i, xi) in x.iter().enumerate() {
            let p = u64::from(*xi) * u64::from(*xi);
            columns.low[2 * i] += p & LOW;
            columns.high[2 * i] += p >> 32;
        }
        self.reduce(columns, out);
    }

    /// Montgomery reduction of `T < n·R` held in `columns`:
    /// `out = T·R⁻¹ mod n`. Row `i` adds `u·n·2^(32i)`, which clears limb
    /// `i`; the limb's carry is kept aside for the next one.
    fn reduce(&self, columns: &mut Columns, out: &mut [u32]) {
        let l = self.n.len();
        let mut carry = 0u64;
        for i in 0..l {
            let u = (columns.at(i, carry) as u32).wrapping_mul(self.n_neg_inv);
            columns.add_row(i, u, &self.n);
            carry = columns.at(i, carry) >> 32;
        }
        // The result, below 2n, is in the upper columns.
        for (k, o) in out.iter_mut().enumerate() {
            let v = columns.at(l + k, carry);
            *o = v as u32;
            carry = v >> 32;
        }
        let top = columns.at(2 * l, carry);
        if top != 0 || !less_than(out, &self.n) {
            let mut borrow = 0i64;
            for (o, nj) in out.iter_mut().zip(&self.n) {
                let v = i64::from(*o) - i64::from(*nj) + borrow;
                *o = v as u32;
                borrow = v >> 32;
            }
        }
    }
}

/// A double-width number as column sums: limb `k` is
/// `low[k] + high[k - 1]` plus the carry from below. Every limb product
/// `a·b` placed at column `k` adds its low half to `low[k]` and its high
/// half to `high[k]` (which counts one column up): one product, two
/// independent additions, no carry chain, so the loop vectorises.
struct Columns {
    low: Vec<u64>,
    high: Vec<u64>,
}

impl Columns {
    /// Room for the product of two numbers of `limbs` limbs.
    fn new(limbs: usize) -> Self {
        Self {
            low: vec![0; 2 * limbs + 1],
            high: vec![0; 2 * limbs + 1],
        }
    }

    fn clear(&mut self) {
        self.low.fill(0);
        self.high.fill(0);
    }

    /// Adds `a·b[j]` at column `at + j` for every `j`.
    #[inline(always)]
    fn add_row(&mut self, at: usize, a: u32, b: &[u32]) {
        let a = u64::from(a);
        let low = self.low[at..].iter_mut();
        let high = self.high[at..].iter_mut();
        for ((lo, hi), bj) in low.zip(high).zip(b) {
            let p = a * u64::from(*bj);
            *lo += p & LOW;
            *hi += p >> 32;
        }
    }

    fn double(&mut self) {
        for c in self.low.iter_mut().chain(self.high.iter_mut()) {
            *c <<= 1;
        }
    }

    /// The full value of column `k` given the carry into it.
    #[inline(always)]
    fn at(&self, k: usize, carry: u64) -> u64 {
        let below = k.checked_sub(1).map_or(0, |j| self.high[j]);
        self.low[k] + below + carry
    }
}

/// `a < b` for little-endian limbs of equal length.
fn less_than(a: &[u32], b: &[u32]) -> bool {
    for (x, y) in a.iter().rev().zip(b.iter().rev()) {
        if x != y {
            return x < y;
        }
    }
    false
}

/// Big-endian bytes (at most `4·limbs`) to little-endian limbs.
pub(super) fn limbs_from_be(bytes: &[u8], limbs: usize) -> Option<Vec<u32>> {
    if bytes.len() > 4 * limbs {
        return None;
    }
    let mut out = vec![0u32; limbs];
    for (i, chunk) in bytes.rchunks(4).enumerate() {
        let mut word = [0u8; 4];
        word[4 - chunk.len()..].copy_from_slice(chunk);
        out[i] = u32::from_be_bytes(word);
    }
    Some(out)
}

/// Little-endian limbs to big-endian bytes (`4·limbs` of them).
pub(super) fn limbs_to_be(limbs: &[u32]) -> Vec<u8> {
    limbs.iter().rev().flat_map(|l| l.to_be_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crypto_bigint::modular::{FixedMontyForm, FixedMontyParams};
    use crypto_bigint::{Odd, Uint, U2048};
    use rsa::rand_core::{OsRng, RngCore};

    const L: usize = 64;

    fn random_limbs(rng: &mut impl RngCore) -> Vec<u32> {
        (0..L).map(|_| rng.next_u32()).collect()
    }

    fn to_uint(limbs: &[u32]) -> U2048 {
        U2048::from_be_slice(&limbs_to_be(limbs))
    }

    fn from_uint(x: &U2048) -> Vec<u32> {
        limbs_from_be(x.to_be_bytes().as_slice(), L).unwrap()
    }

    /// A random odd modulus; `top` forces the highest bit (RSA-like) or
    /// leaves it random, to reach results both just under n and above R.
    fn modulus(rng: &mut impl RngCore, top: bool) -> (Modulus, FixedMontyParams<{ U2048::LIMBS }>) {
        let mut n = random_limbs(rng);
        n[0] |= 1;
        if top {
            n[L - 1] |= 1 << 31;
        } else {
            n[L - 1] = (n[L - 1] >> (rng.next_u32() % 31)) | 1;
        }
        let odd = Odd::new(to_uint(&n)).unwrap();
        let params = FixedMontyParams::new_vartime(odd);
        let inv = params.mod_neg_inv().0 as u32;
        let r2 = from_uint(params.r2());
        (Modulus::new(n, inv, r2).unwrap(), params)
    }

    fn below(n: &Modulus, rng: &mut impl RngCore) -> Vec<u32> {
        let mut x = random_limbs(rng);
        x[L - 1] %= n.n[L - 1];
        x
    }

    #[test]
    fn products_and_squares_match_crypto_bigint() {
        let mut rng = OsRng;
        for round in 0..200 {
            let (m, params) = modulus(&mut rng, round % 2 == 0);
            let (x, y) = (below(&m, &mut rng), below(&m, &mut rng));
            let mut out = vec![0u32; L];
            m.mul(&x, &y, &mut Columns::new(L), &mut out);
            // x·y·R⁻¹: multiply the Montgomery forms' representatives.
            let expected = FixedMontyForm::from_montgomery(to_uint(&x), &params)
                .mul(&FixedMontyForm::from_montgomery(to_uint(&y), &params));
            assert_eq!(out, from_uint(expected.as_montgomery()), "mul, round {round}");
            m.square(&x, &mut Columns::new(L), &mut out);
            let expected = FixedMontyForm::from_montgomery(to_uint(&x), &params).square();
            assert_eq!(out, from_uint(expected.as_montgomery()), "square, round {round}");
        }
    }

    #[test]
    fn extreme_operands_match_crypto_bigint() {
        let mut rng = OsRng;
        let (m, params) = modulus(&mut rng, true);
        let mut n_minus_one = m.n.clone();
        n_minus_one[0] -= 1;
        for x in [
            vec![0u32; L],
            {
                let mut one = vec![0u32; L];
                one[0] = 1;
                one
            },
            n_minus_one,
        ] {
            let mut out = vec![0u32; L];
            m.square(&x, &mut Columns::new(L), &mut out);
            let expected = FixedMontyForm::from_montgomery(to_uint(&x), &params).square();
            assert_eq!(out, from_uint(expected.as_montgomery()));
            let pow = m.pow_f4(&x).unwrap();
            let expected = FixedMontyForm::new(&to_uint(&x), &params)
                .pow(&Uint::<1>::from_u32(65_537))
                .retrieve();
            assert_eq!(pow, from_uint(&expected));
        }
    }

    #[test]
    fn pow_f4_matches_crypto_bigint() {
        let mut rng = OsRng;
        for round in 0..50 {
            let (m, params) = modulus(&mut rng, round % 2 == 0);
            let s = below(&m, &mut rng);
            let expected = FixedMontyForm::new(&to_uint(&s), &params)
                .pow(&Uint::<1>::from_u32(65_537))
                .retrieve();
            assert_eq!(m.pow_f4(&s).unwrap(), from_uint(&expected), "round {round}");
        }
    }

    #[test]
    fn the_largest_operands_at_the_largest_size_match_crypto_bigint() {
        // n = 2^4096 - 1 and x = n - 1: every limb all ones (or nearly), the
        // largest column sums the code can meet.
        use crypto_bigint::U4096;
        let limbs = MAX_LIMBS;
        let n = vec![u32::MAX; limbs];
        let odd = Odd::new(U4096::from_be_slice(&limbs_to_be(&n))).unwrap();
        let params = FixedMontyParams::new_vartime(odd);
        let r2 = limbs_from_be(params.r2().to_be_bytes().as_slice(), limbs).unwrap();
        let m = Modulus::new(n.clone(), params.mod_neg_inv().0 as u32, r2).unwrap();
        let mut x = n.clone();
        x[0] -= 1;
        let as_uint = |v: &[u32]| U4096::from_be_slice(&limbs_to_be(v));
        let mut out = vec![0u32; limbs];
        m.square(&x, &mut Columns::new(limbs), &mut out);
        let expected = FixedMontyForm::from_montgomery(as_uint(&x), &params).square();
        assert_eq!(as_uint(&out), *expected.as_montgomery());
        m.mul(&x, &x, &mut Columns::new(limbs), &mut out);
        assert_eq!(as_uint(&out), *expected.as_montgomery());
        let expected = FixedMontyForm::new(&as_uint(&x), &params)
            .pow(&Uint::<1>::from_u32(65_537))
            .retrieve();
        assert_eq!(as_uint(&m.pow_f4(&x).unwrap()), expected);
    }

    #[test]
    fn inconsistent_constants_are_refused() {
        let mut rng = OsRng;
        let (m, _) = modulus(&mut rng, true);
        assert!(Modulus::new(m.n.clone(), m.n_neg_inv.wrapping_add(2), m.r2.clone()).is_none());
        let mut even = m.n.clone();
        even[0] &= !1;
        assert!(Modulus::new(even, m.n_neg_inv, m.r2.clone()).is_none());
        assert!(Modulus::new(m.n.clone(), m.n_neg_inv, m.r2[1..].to_vec()).is_none());
        assert!(Modulus::new(Vec::new(), 1, Vec::new()).is_none());
        assert!(Modulus::new(vec![1; MAX_LIMBS + 1], u32::MAX, vec![0; MAX_LIMBS + 1]).is_none());
        assert_eq!(m.pow_f4(&m.n[1..]), None, "wrong length");
    }

    #[test]
    fn limbs_round_trip() {
        let bytes: Vec<u8> = (1..=10).collect();
        let limbs = limbs_from_be(&bytes, 3).unwrap();
        assert_eq!(limbs, vec![0x0708_090a, 0x0304_0506, 0x0000_0102]);
        assert_eq!(limbs_to_be(&limbs)[2..], bytes[..]);
        assert_eq!(limbs_from_be(&bytes, 2), None);
    }
}
