//! `s^65537 mod n` for RSA-2048 with AVX-512 IFMA: the public-key operation
//! of an RS256 verification, about 2.4 times as fast as AWS-LC's on the
//! same CPU (docs/native.md has the measurements).
//!
//! AWS-LC computes it with 64-bit `mulx`/`adx` Montgomery squarings, each
//! a chain of carries. Here a number is 40 limbs of 52 bits in five 512-bit
//! registers, and `vpmadd52luq`/`vpmadd52huq` add the low and high halves
//! of eight 52×52-bit products into eight 64-bit sums at once, with room
//! for every carry until the end of a multiplication. The multiplication
//! is word-serial Almost Montgomery Multiplication (Gueron and Krasnov,
//! "Speeding up Big-Numbers Squaring", 2012) with `R = 2^2080`: each of
//! its 40 steps adds `a·bᵢ` and `m·n`, where `m` makes the lowest limb
//! zero, and drops that limb. The two lowest limbs of the sum are also kept
//! in general registers, so the next step's `m` does not wait for the
//! vector unit to finish the step before.
//!
//! Only public values go through here (a signature, a public key), so the
//! code may take data-dependent branches. The functions are compiled for
//! `avx512f` and `avx512ifma`; [`crate::ffi::ifma_pow_f4`] is the one place
//! that checks the CPU has them before calling [`pow_f4`].

use std::arch::x86_64::{
    __m512i, _mm512_add_epi64, _mm512_alignr_epi64, _mm512_and_si512, _mm512_castsi512_si128, _mm512_cmpgt_epu64_mask,
    _mm512_madd52hi_epu64, _mm512_madd52lo_epu64, _mm512_mask_blend_epi64, _mm512_permutexvar_epi64, _mm512_set1_epi64,
    _mm512_set_epi64, _mm512_setzero_si512, _mm512_srli_epi64, _mm_cvtsi128_si64,
};

/// Limbs of 52 bits: 2080 bits, so that `4n < R` for any 2048-bit `n`.
const LIMBS: usize = 40;
const MASK: u64 = (1 << 52) - 1;
/// Bytes of the modulus, the signature and the result.
pub(crate) const BYTES: usize = 256;

/// A number in five registers, limb `8r + k` in lane `k` of register `r`.
type Wide = [__m512i; 5];

/// A 2048-bit modulus with the constants of its Montgomery arithmetic.
#[derive(Clone)]
pub(crate) struct Modulus {
    n: [u64; LIMBS],
    /// `-n⁻¹ mod 2⁵²`.
    k0: u64,
    /// `R² mod n`, `R = 2^2080`.
    rr: [u64; LIMBS],
}

impl std::fmt::Debug for Modulus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Modulus(2048 bits)")
    }
}

impl Modulus {
    /// `None` unless `modulus` (big-endian) is odd and exactly 2048 bits.
    pub(crate) fn new(modulus: &[u8]) -> Option<Self> {
        let be: &[u8; BYTES] = modulus.try_into().ok()?;
        if be[0] < 0x80 || be[BYTES - 1] & 1 == 0 {
            return None;
        }
        let n = limbs(be);
        // Newton's iteration doubles the correct low bits of n⁻¹ each time:
        // 1 (n is odd) → 2 → … → 64.
        let mut inverse: u64 = 1;
        for _ in 0..6 {
            inverse = inverse.wrapping_mul(2u64.wrapping_sub(n[0].wrapping_mul(inverse)));
        }
        let k0 = inverse.wrapping_neg() & MASK;
        // R² mod n = 2^4160 mod n by doubling 2^2047 (below n, whose top
        // bit is set and which is odd) 2113 times, each time below n again:
        // about 25 µs, once per key.
        let mut rr = [0u64; LIMBS];
        rr[2047 / 52] = 1 << (2047 % 52);
        for _ in 2047..2 * 52 * LIMBS {
            double_mod(&mut rr, &n);
        }
        Some(Self { n, k0, rr })
    }
}

/// `s^65537 mod n`, big-endian, for a signature `s < n` (big-endian).
///
/// Compiled for `avx512f` and `avx512ifma`: to be called only on a CPU
/// that has both ([`crate::ffi::ifma_pow_f4`] checks).
#[target_feature(enable = "avx512f,avx512ifma")]
pub(crate) fn pow_f4(modulus: &Modulus, s: &[u8; BYTES]) -> [u8; BYTES] {
    let n = load(&modulus.n);
    let low = [modulus.n[0], modulus.n[1], modulus.n[2]];
    let step = |a: &Wide, b: &Wide| amm(a, b, &n, low, modulus.k0);
    let s = load(&limbs(s));
    // s·R, then (s·R)^(2^16) = s^65536·R; multiplying by s itself (not
    // s·R) divides R out: s^65537, below 2n.
    let mut x = step(&s, &load(&modulus.rr));
    for _ in 0..16 {
        x = step(&x, &x);
    }
    let mut out = store(&step(&x, &s));
    if !below(&out, &modulus.n) {
        subtract(&mut out, &modulus.n);
    }
    bytes(&out)
}

/// `a·b·R⁻¹ mod n`, below `2n` for `a, b < 2n` (both normalised).
#[target_feature(enable = "avx512f,avx512ifma")]
fn amm(a: &Wide, b: &Wide, n: &Wide, n_low: [u64; 3], k0: u64) -> Wide {
    let zero = _mm512_setzero_si512();
    let mut acc: Wide = [zero; 5];
    let (a0, a1, a2) = (lane(a, 0), lane(a, 1), lane(a, 2));
    // The sum's limbs 0 and 1, which the vector unit also computes but
    // this function never reads back from it.
    let (mut s0, mut s1) = (0u64, 0u64);
    for i in 0..LIMBS {
        let bv = _mm512_permutexvar_epi64(_mm512_set1_epi64((i % 8) as i64), b[i / 8]);
        let bi = lane0(bv);
        // Limb 2 as it stands before this step (the vector unit's, exact).
        let x2 = lane0(_mm512_permutexvar_epi64(_mm512_set1_epi64(2), acc[0]));
        for (sum, a) in acc.iter_mut().zip(a) {
            *sum = _mm512_madd52lo_epu64(*sum, *a, bv);
        }
        let (l0, h0) = mul(a0, bi);
        let (l1, h1) = mul(a1, bi);
        let (l2, _) = mul(a2, bi);
        let t0 = s0 + l0;
        let m = t0.wrapping_mul(k0) & MASK;
        let mv = _mm512_set1_epi64(m as i64);
        for (sum, n) in acc.iter_mut().zip(n) {
            *sum = _mm512_madd52lo_epu64(*sum, *n, mv);
        }
        let (nl0, nh0) = mul(n_low[0], m);
        let (nl1, nh1) = mul(n_low[1], m);
        let (nl2, _) = mul(n_low[2], m);
        // t0 + nl0 ≡ 0 mod 2⁵²: the limb dropped, its carry kept.
        let carry = (t0 + nl0) >> 52;
        s0 = s1 + l1 + nl1 + carry + h0 + nh0;
        s1 = x2 + l2 + nl2 + h1 + nh1;
        // Drop limb 0: every limb moves one lane down.
        for r in 0..4 {
            acc[r] = _mm512_alignr_epi64::<1>(acc[r + 1], acc[r]);
        }
        acc[4] = _mm512_alignr_epi64::<1>(zero, acc[4]);
        // The high halves belong one limb up, which is where they now are.
        for ((sum, a), n) in acc.iter_mut().zip(a).zip(n) {
            *sum = _mm512_madd52hi_epu64(*sum, *a, bv);
            *sum = _mm512_madd52hi_epu64(*sum, *n, mv);
        }
    }
    acc[0] = _mm512_mask_blend_epi64(0b11, acc[0], _mm512_set_epi64(0, 0, 0, 0, 0, 0, s1 as i64, s0 as i64));
    normalise(acc)
}

/// Carries each lane's bits above 52 into the next lane, until none has
/// any (a sum of at most 160 terms below 2⁵² leaves at most a few rounds).
#[target_feature(enable = "avx512f,avx512ifma")]
fn normalise(mut v: Wide) -> Wide {
    let mask = _mm512_set1_epi64(MASK as i64);
    loop {
        let over = v.iter().fold(0u8, |over, r| over | _mm512_cmpgt_epu64_mask(*r, mask));
        if over == 0 {
            return v;
        }
        let carries = v.map(|r| _mm512_srli_epi64::<52>(r));
        for r in 0..5 {
            let below = if r == 0 { _mm512_setzero_si512() } else { carries[r - 1] };
            // Lane k receives lane k-1's carry (lane 0 the register below's lane 7).
            let up = _mm512_alignr_epi64::<7>(carries[r], below);
            v[r] = _mm512_add_epi64(_mm512_and_si512(v[r], mask), up);
        }
    }
}

#[target_feature(enable = "avx512f,avx512ifma")]
fn load(limbs: &[u64; LIMBS]) -> Wide {
    std::array::from_fn(|r| {
        let l = |k: usize| limbs[8 * r + k] as i64;
        _mm512_set_epi64(l(7), l(6), l(5), l(4), l(3), l(2), l(1), l(0))
    })
}

#[target_feature(enable = "avx512f,avx512ifma")]
fn store(v: &Wide) -> [u64; LIMBS] {
    std::array::from_fn(|i| lane(v, i))
}

#[target_feature(enable = "avx512f,avx512ifma")]
fn lane(v: &Wide, i: usize) -> u64 {
    lane0(_mm512_permutexvar_epi64(_mm512_set1_epi64((i % 8) as i64), v[i / 8]))
}

#[target_feature(enable = "avx512f,avx512ifma")]
fn lane0(v: __m512i) -> u64 {
    _mm_cvtsi128_si64(_mm512_castsi512_si128(v)) as u64
}

/// The low and high 52 bits of a 52×52-bit product, as IFMA splits it.
fn mul(x: u64, y: u64) -> (u64, u64) {
    let p = u128::from(x) * u128::from(y);
    (p as u64 & MASK, (p >> 52) as u64)
}

/// Big-endian bytes to little-endian 52-bit limbs.
fn limbs(be: &[u8; BYTES]) -> [u64; LIMBS] {
    let mut out = [0u64; LIMBS];
    for (i, byte) in be.iter().rev().enumerate() {
        let bit = 8 * i;
        let (limb, shift) = (bit / 52, bit % 52);
        out[limb] |= (u64::from(*byte) << shift) & MASK;
        if shift > 44 {
            out[limb + 1] |= u64::from(*byte) >> (52 - shift);
        }
    }
    out
}

/// Little-endian 52-bit limbs (a value below 2²⁰⁴⁸) to big-endian bytes.
fn bytes(limbs: &[u64; LIMBS]) -> [u8; BYTES] {
    let mut out = [0u8; BYTES];
    for (i, byte) in out.iter_mut().rev().enumerate() {
        let bit = 8 * i;
        let (limb, shift) = (bit / 52, bit % 52);
        let mut value = limbs[limb] >> shift;
        if shift > 44 && limb + 1 < LIMBS {
            value |= limbs[limb + 1] << (52 - shift);
        }
        *byte = value as u8;
    }
    out
}

/// Whether `x < n` (both normalised).
fn below(x: &[u64; LIMBS], n: &[u64; LIMBS]) -> bool {
    for (x, n) in x.iter().rev().zip(n.iter().rev()) {
        if x != n {
            return x < n;
        }
    }
    false
}

/// `x -= n` for `x ≥ n` (both normalised).
fn subtract(x: &mut [u64; LIMBS], n: &[u64; LIMBS]) {
    let mut borrow = 0u64;
    for (x, n) in x.iter_mut().zip(n) {
        let d = x.wrapping_sub(*n).wrapping_sub(borrow);
        borrow = d >> 63;
        *x = d & MASK;
    }
}

/// `x = 2x mod n` for `x < n`.
fn double_mod(x: &mut [u64; LIMBS], n: &[u64; LIMBS]) {
    let mut carry = 0;
    for limb in x.iter_mut() {
        let d = (*limb << 1) | carry;
        carry = d >> 52;
        *limb = d & MASK;
    }
    // 2x < 2n < 2^2049 fits in the 2080 bits; one subtraction is enough.
    if !below(x, n) {
        subtract(x, n);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use rsa::BigUint;

    fn xorshift(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    fn random_bytes(seed: &mut u64) -> [u8; BYTES] {
        std::array::from_fn(|_| xorshift(seed) as u8)
    }

    #[test]
    fn limbs_and_bytes_are_inverse() {
        let mut seed = 7;
        for _ in 0..100 {
            let be = random_bytes(&mut seed);
            assert_eq!(bytes(&limbs(&be)), be);
        }
    }

    #[test]
    fn refuses_what_is_not_an_odd_2048_bit_modulus() {
        let mut n = [0xffu8; BYTES];
        assert!(Modulus::new(&n).is_some());
        n[BYTES - 1] = 0xfe;
        assert!(Modulus::new(&n).is_none(), "even");
        assert!(Modulus::new(&[0xff; BYTES - 1]).is_none(), "2040 bits");
        assert!(Modulus::new(&[0xff; BYTES + 1]).is_none(), "2056 bits");
        let mut short = [0xffu8; BYTES];
        short[0] = 0x7f;
        assert!(Modulus::new(&short).is_none(), "2047 bits");
    }

    #[test]
    fn the_constants_are_those_of_the_modulus() {
        let mut seed = 11;
        let mut be = random_bytes(&mut seed);
        be[0] |= 0x80;
        be[BYTES - 1] |= 1;
        let modulus = Modulus::new(&be).unwrap();
        assert_eq!(modulus.n[0].wrapping_mul(modulus.k0) & MASK, MASK, "n·k0 ≡ -1");
        let n = BigUint::from_bytes_be(&be);
        let rr = (BigUint::from(1u8) << 4160usize) % &n;
        let mut rr_be = [0u8; BYTES];
        let raw = rr.to_bytes_be();
        rr_be[BYTES - raw.len()..].copy_from_slice(&raw);
        assert_eq!(modulus.rr, limbs(&rr_be));
    }

    /// Against a general big-number library on random moduli and bases,
    /// including the extremes (0, 1, n-1) and moduli with all bits set.
    #[test]
    fn agrees_with_big_number_arithmetic() {
        if crate::ffi::ifma_pow_f4(&Modulus::new(&[0xff; BYTES]).unwrap(), &[0; BYTES]).is_none() {
            eprintln!("no AVX-512 IFMA on this CPU: the IFMA code is not run (the AWS-LC path is)");
            return;
        }
        let mut seed = 0x2545_f491_4f6c_dd1d;
        let mut checked = 0;
        for case in 0..300 {
            let mut be = random_bytes(&mut seed);
            if case % 50 == 0 {
                be = [0xff; BYTES];
            }
            be[0] |= 0x80;
            be[BYTES - 1] |= 1;
            let modulus = Modulus::new(&be).unwrap();
            let n = BigUint::from_bytes_be(&be);
            let one = BigUint::from(1u8);
            for base in [
                BigUint::from_bytes_be(&random_bytes(&mut seed)) % &n,
                BigUint::from(0u8),
                one.clone(),
                &n - &one,
            ] {
                let mut s = [0u8; BYTES];
                let raw = base.to_bytes_be();
                s[BYTES - raw.len()..].copy_from_slice(&raw);
                let ours = crate::ffi::ifma_pow_f4(&modulus, &s).unwrap();
                let expected = base.modpow(&BigUint::from(65_537u32), &n);
                assert_eq!(BigUint::from_bytes_be(&ours), expected, "case {case}");
                checked += 1;
            }
        }
        assert_eq!(checked, 1200);
    }
}
