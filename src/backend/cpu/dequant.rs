//! q8_0 keys and values to f32, a block at a time: what attention does to an 8-bit KV pool
//! as it reads it. The same loops compiled for AVX2 (eight lanes, `vpmovsxbd` for the
//! widening) and for the baseline; multiplying an exact integer by one scale rounds the same
//! way on both, so every path gives the same bits ([`groups_portable`] and [`rows_portable`]
//! are the references).

use half::f16;

/// Values: `out[i] = q[i] * scale[i / group]`, `scales` holding f16 bits, one per group.
pub fn groups(q: &[i8], scales: &[u16], group: usize, out: &mut [f32]) {
    assert!(
        q.len() == out.len() && group > 0 && scales.len() * group >= q.len(),
        "dequant::groups: lengths"
    );
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2; the lengths were checked above.
        return unsafe { groups_avx2(q, scales, group, out) };
    }
    groups_portable(q, scales, group, out)
}

/// Keys, a transposed tile of `[rows, padded]`: `out[r * padded + p] = q[r * padded + p] *
/// scale[r / group][p]`, `scales` holding `[rows / group, padded]` f16 bits (one scale per
/// position and group of rows).
pub fn rows(q: &[i8], scales: &[u16], (padded, group): (usize, usize), out: &mut [f32]) {
    assert!(
        q.len() == out.len()
            && padded > 0
            && group > 0
            && q.len().is_multiple_of(padded)
            && scales.len() * group >= q.len(),
        "dequant::rows: lengths"
    );
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("f16c") {
        // SAFETY: the CPU supports AVX2 and F16C; the lengths were checked above.
        return unsafe { rows_avx2(q, scales, (padded, group), out) };
    }
    rows_portable(q, scales, (padded, group), out)
}

/// The reference of [`groups`].
#[inline(always)]
pub fn groups_portable(q: &[i8], scales: &[u16], group: usize, out: &mut [f32]) {
    for ((qs, os), s) in q.chunks(group).zip(out.chunks_mut(group)).zip(scales) {
        let s = f16::from_bits(*s).to_f32();
        for (o, q) in os.iter_mut().zip(qs) {
            *o = f32::from(*q) * s;
        }
    }
}

/// Longest row of scales converted on the stack at once.
const ROW: usize = 64;

/// The reference of [`rows`].
#[inline(always)]
pub fn rows_portable(q: &[i8], scales: &[u16], (padded, group): (usize, usize), out: &mut [f32]) {
    let mut row = [0f32; ROW];
    for (r, (qs, os)) in q.chunks(padded).zip(out.chunks_mut(padded)).enumerate() {
        let srow = &scales[(r / group) * padded..(r / group + 1) * padded];
        if padded > ROW {
            for ((o, q), s) in os.iter_mut().zip(qs).zip(srow) {
                *o = f32::from(*q) * f16::from_bits(*s).to_f32();
            }
            continue;
        }
        if r % group == 0 {
            super::widen::widen(srow, &mut row[..padded]);
        }
        for ((o, q), s) in os.iter_mut().zip(qs).zip(&row[..padded]) {
            *o = f32::from(*q) * s;
        }
    }
}

/// # Safety
/// AVX2; the lengths as [`groups`] checks them.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn groups_avx2(q: &[i8], scales: &[u16], group: usize, out: &mut [f32]) {
    groups_portable(q, scales, group, out)
}

/// # Safety
/// AVX2 and F16C; the lengths as [`rows`] checks them.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn rows_avx2(q: &[i8], scales: &[u16], shape: (usize, usize), out: &mut [f32]) {
    rows_portable(q, scales, shape, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> (Vec<i8>, Vec<u16>) {
        let q = (0..n)
            .map(|i| ((i * 37 + 11) % 255) as i32 - 127)
            .map(|v| v as i8)
            .collect();
        let s = (0..n)
            .map(|i| f16::from_f32(0.001 + (i % 13) as f32 * 0.37).to_bits())
            .collect();
        (q, s)
    }

    #[test]
    fn every_path_matches_the_reference() {
        for (n, group) in [(64, 32), (96, 32), (64, 16), (24, 8)] {
            let (q, s) = data(n);
            let (mut fast, mut slow) = (vec![0f32; n], vec![0f32; n]);
            groups(&q, &s[..n / group], group, &mut fast);
            groups_portable(&q, &s[..n / group], group, &mut slow);
            assert_eq!(fast, slow);
            assert_eq!(slow[group], f32::from(q[group]) * f16::from_bits(s[1]).to_f32());
        }
        for (rows_n, padded, group) in [(64, 16, 32), (32, 16, 16), (64, 80, 32), (96, 32, 32)] {
            let n = rows_n * padded;
            let (q, s) = data(n);
            let s = &s[..rows_n / group * padded];
            let (mut fast, mut slow) = (vec![0f32; n], vec![0f32; n]);
            rows(&q, s, (padded, group), &mut fast);
            rows_portable(&q, s, (padded, group), &mut slow);
            assert_eq!(fast, slow);
            let (r, p) = (group + 1, 3);
            let want = f32::from(q[r * padded + p]) * f16::from_bits(s[padded + p]).to_f32();
            assert_eq!(slow[r * padded + p], want);
        }
    }
}
