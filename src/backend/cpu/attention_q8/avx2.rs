//! AVX2 kernels of [`super`]: eight lanes a register.

use super::{KeyTile, QuantQuery, ValueBlock, LANES, QUAD, VLANES};
use std::arch::x86_64::*;

/// Heads `first..first + H` of [`super::axpys_portable`], 16 dimensions at a time (two
/// vectors sharing each position's conversion), then 8.
///
/// # Safety
/// AVX2 and FMA; the shapes as `value_weights` proves them, `weights` its output.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn axpys<const H: usize>(
    (m, d): (usize, usize),
    v: ValueBlock,
    weights: &[f32],
    first: usize,
    orow: &mut [f32],
) {
    let (groups, m2) = (d / v.group, m.next_multiple_of(2));
    let mut c = 0;
    while c < d {
        let wide = c + 2 * VLANES <= d;
        let (ga, gb) = (c / v.group, (c + VLANES).min(d - 1) / v.group);
        // Each head's weights of the two groups.
        let wa: [&[f32]; H] = std::array::from_fn(|h| &weights[((first + h) * groups + ga) * m2..][..m2]);
        let wb: [&[f32]; H] = std::array::from_fn(|h| &weights[((first + h) * groups + gb) * m2..][..m2]);
        // Each chain continues from the output's value.
        let (mut lo, mut hi) = ([_mm256_setzero_ps(); H], [_mm256_setzero_ps(); H]);
        for h in 0..H {
            let o = &orow[(first + h) * d + c..];
            // SAFETY: `o` holds 8 f32 (16 when `wide`).
            unsafe {
                lo[h] = _mm256_loadu_ps(o.as_ptr());
                if wide {
                    hi[h] = _mm256_loadu_ps(o.as_ptr().add(VLANES));
                }
            }
        }
        // One position's values with the heads' weights (a macro: a closure would not
        // share the target features).
        macro_rules! position {
            ($s:expr) => {{
                let (s, row) = ($s, $s * d + c);
                // SAFETY: `s < m` and `c + 8 <= d`: 8 bytes of the block (16 when `wide`);
                // `s < m2`, each weight list's length.
                unsafe {
                    let xa = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(
                        v.q.as_ptr().add(row) as *const __m128i
                    )));
                    for h in 0..H {
                        lo[h] = _mm256_fmadd_ps(xa, _mm256_set1_ps(*wa[h].get_unchecked(s)), lo[h]);
                    }
                    if wide {
                        let xb = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(
                            v.q.as_ptr().add(row + VLANES) as *const __m128i,
                        )));
                        for h in 0..H {
                            hi[h] = _mm256_fmadd_ps(xb, _mm256_set1_ps(*wb[h].get_unchecked(s)), hi[h]);
                        }
                    }
                }
            }};
        }
        // The positions in `pair_order`: pairs, the odd one first.
        let mut p = 0;
        while p + 1 < m {
            position!(p + 1);
            position!(p);
            p += 2;
        }
        if p < m {
            position!(p);
        }
        for h in 0..H {
            let o = &mut orow[(first + h) * d + c..];
            // SAFETY: `o` holds 8 f32 (16 when `wide`).
            unsafe {
                _mm256_storeu_ps(o.as_mut_ptr(), lo[h]);
                if wide {
                    _mm256_storeu_ps(o.as_mut_ptr().add(VLANES), hi[h]);
                }
            }
        }
        c += if wide { 2 * VLANES } else { VLANES };
    }
}

/// Heads `first..first + H` of `q` (`d` dimensions each) against 16 positions from
/// `from`, eight at a time.
///
/// # Safety
/// AVX2, F16C and FMA; the shapes as `check` proves them.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dots<const H: usize>(
    q: &QuantQuery,
    k: KeyTile,
    (from, d): (usize, usize),
    first: usize,
    out: &mut [[f32; LANES]],
) {
    let groups = d / k.group;
    let quads = k.group / QUAD;
    let ones = _mm256_set1_epi16(1);
    for half in 0..LANES / 8 {
        let p = from + half * 8;
        let mut acc = [_mm256_setzero_ps(); H];
        for gi in 0..groups {
            let mut sums = [_mm256_setzero_si256(); H];
            for qi in 0..quads {
                let quad = gi * quads + qi;
                // SAFETY: `quad < d / 4` and `p + 8 <= padded`: 32 bytes in the tile.
                let kv =
                    unsafe { _mm256_loadu_si256(k.q.as_ptr().add((quad * k.padded + p) * QUAD) as *const __m256i) };
                let magnitude = _mm256_sign_epi8(kv, kv);
                for h in 0..H {
                    let at = (first + h) * d + quad * QUAD;
                    // SAFETY: `at + 4 <= q.q.len()` (head and quad in range).
                    let four = unsafe { (q.q.as_ptr().add(at) as *const i32).read_unaligned() };
                    let signed = _mm256_sign_epi8(_mm256_set1_epi32(four), kv);
                    let pairs = _mm256_maddubs_epi16(magnitude, signed);
                    sums[h] = _mm256_add_epi32(sums[h], _mm256_madd_epi16(pairs, ones));
                }
            }
            // SAFETY: `gi < d / group` and `p + 8 <= padded`: 8 scales in the tile.
            let ks =
                _mm256_cvtph_ps(unsafe { _mm_loadu_si128(k.scales.as_ptr().add(gi * k.padded + p) as *const __m128i) });
            for h in 0..H {
                let scale = _mm256_mul_ps(ks, _mm256_set1_ps(q.scales[(first + h) * groups + gi]));
                acc[h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums[h]), scale, acc[h]);
            }
        }
        for h in 0..H {
            // SAFETY: `out[h]` holds 16 f32, `half * 8 + 8 <= 16`.
            unsafe { _mm256_storeu_ps(out[h].as_mut_ptr().add(half * 8), acc[h]) };
        }
    }
}
