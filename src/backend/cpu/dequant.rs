//! q8_0 values to f32, a block at a time: what attention does to an 8-bit pool's values as
//! it reads them (keys are scored in place, [`super::attention_q8`]). The same loop compiled
//! for AVX2 (eight lanes, `vpmovsxbd` for the widening) and for the baseline; multiplying an
//! exact integer by one scale rounds the same way on both, so every path gives the same bits
//! ([`groups_portable`] is the reference).

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

/// # Safety
/// AVX2; the lengths as [`groups`] checks them.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn groups_avx2(q: &[i8], scales: &[u16], group: usize, out: &mut [f32]) {
    groups_portable(q, scales, group, out)
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
    }
}
