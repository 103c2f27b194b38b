//! 4-bit values for the KV pool (llama.cpp's `-ctv q4_0`): integers two a byte, one f16
//! scale per group of a position's head. Each head's values are rotated by the normalized
//! Walsh-Hadamard transform before they are quantized ([`rotate`], by the caller): a head's
//! few outlying dimensions would otherwise set the scale of their whole group, and rotated
//! they are spread over every dimension (on SmolLM2 the rotation halves what 4-bit values
//! add to perplexity). The transform is its own inverse: [`Q4Store::read`] undoes it, and
//! attention that reads the integers in place rotates its output instead (a sum of rotated
//! values is the rotated sum).

use half::f16;

/// q4_0 values, `[.., head_dim]`: value `i` is `(nibble(i) - 8) * scales[i / group]` of its
/// head's rotated vector.
pub(crate) struct Q4Store {
    /// Two values a byte, as llama.cpp's q4_0 lays a block: value `k` of a group of `g` in
    /// byte `k % (g / 2)` of the group's, the first half in the low nibbles.
    q: Vec<u8>,
    scales: Vec<u16>,
    group: usize,
    head_dim: usize,
}

impl Q4Store {
    /// Zeroed storage for `len` values of heads `head_dim` wide in groups of `group` (zero
    /// scales: every value reads as 0).
    pub fn new(len: usize, group: usize, head_dim: usize) -> Self {
        Self {
            q: vec![0u8; len.div_ceil(2)],
            scales: vec![0u16; len / group],
            group,
            head_dim,
        }
    }

    /// Values per scale.
    pub fn group(&self) -> usize {
        self.group
    }

    /// Bytes held (scales included).
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.q.len() + 2 * self.scales.len()
    }

    /// The byte holding value `at` and the nibble's shift in it.
    fn locate(&self, at: usize) -> (usize, u32) {
        let (k, half) = (at % self.group, self.group / 2);
        ((at - k) / 2 + k % half, if k < half { 0 } else { 4 })
    }

    fn nibble(&self, at: usize) -> u8 {
        let (byte, shift) = self.locate(at);
        (self.q[byte] >> shift) & 0x0f
    }

    fn set_nibble(&mut self, at: usize, n: u8) {
        let (byte, shift) = self.locate(at);
        let byte = &mut self.q[byte];
        *byte = (*byte & !(0x0f << shift)) | ((n & 0x0f) << shift);
    }

    /// Stores one group of (rotated) values from `at`, each rounded to the nearest of
    /// -8..=7 steps of the group's scale ([`best_scale`]).
    pub fn set_group(&mut self, at: usize, values: &[f32]) {
        let scale = best_scale(values);
        let inv = match scale.to_f32() {
            s if s != 0.0 => 1.0 / s,
            _ => 0.0,
        };
        for (k, v) in values.iter().enumerate() {
            self.set_nibble(at + k, step(*v, inv));
        }
        self.scales[at / self.group] = scale.to_bits();
    }

    /// Copies `len` values (whole groups) from `from` to `to`.
    pub fn copy_within(&mut self, from: usize, len: usize, to: usize) {
        if [from, to, len].iter().all(|x| x.is_multiple_of(self.group)) {
            self.q.copy_within(from / 2..(from + len) / 2, to / 2);
        } else {
            for k in 0..len {
                let n = self.nibble(from + k);
                self.set_nibble(to + k, n);
            }
        }
        let g = self.group;
        self.scales.copy_within(from / g..(from + len) / g, to / g);
    }

    /// Values `at..at + len` (whole groups) as they lie.
    pub fn block(&self, at: usize, len: usize) -> Q4Block<'_> {
        let g = self.group;
        Q4Block {
            q: &self.q[at / 2..(at + len).div_ceil(2)],
            scales: &self.scales[at / g..(at + len).div_ceil(g)],
            group: g,
        }
    }

    /// The stored bytes of values `at..at + len` (a hint's span).
    pub fn span(&self, at: usize, len: usize) -> &[u8] {
        &self.q[at / 2..(at + len).div_ceil(2)]
    }

    /// Values `at..at + out.len()` (whole positions) as f32 in the heads' own coordinates
    /// (the rotation undone).
    pub fn read(&self, at: usize, out: &mut [f32]) {
        for (k, o) in out.iter_mut().enumerate() {
            let scale = f16::from_bits(self.scales[(at + k) / self.group]).to_f32();
            *o = (f32::from(self.nibble(at + k)) - 8.0) * scale;
        }
        out.chunks_exact_mut(self.head_dim).for_each(rotate);
    }
}

/// `v` in steps of `1 / inv`, rounded to the nearest of -8..=7 (halves up, as llama.cpp's
/// q4_0) and stored as 0..=15: truncating a non-negative float is its floor, and no call
/// to `roundf` keeps the loop in vector registers.
fn step(v: f32, inv: f32) -> u8 {
    (v * inv + 8.5).clamp(0.0, 15.0) as u8
}

/// The scale of a group of 4-bit values: of the value of largest magnitude at -8 steps
/// (llama.cpp's q4_0), at -7.75 to -6.5 or at +7 to +7.5, the one whose rounding loses
/// least (squared).
fn best_scale(values: &[f32]) -> f16 {
    let max = values.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    let loss = |scale: f16| {
        let d = scale.to_f32();
        let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
        let lost = |v: f32| {
            let e = v - ((v * inv + 8.5).clamp(0.0, 15.0) as i32 - 8) as f32 * d;
            e * e
        };
        // Eight running sums, so that the loop is one vector wide.
        let mut sums = [0f32; 8];
        let eights = values.chunks_exact(8);
        let rest: f32 = eights.remainder().iter().map(|&v| lost(v)).sum();
        for eight in eights {
            sums.iter_mut().zip(eight).for_each(|(s, &v)| *s += lost(v));
        }
        sums.iter().sum::<f32>() + rest
    };
    let mut best = (f16::from_f32(max / -8.0), f32::INFINITY);
    for steps in [-8.0f32, -7.75, -7.5, -7.25, -7.0, -6.75, -6.5, 7.0, 7.25, 7.5] {
        let scale = f16::from_f32(max / steps);
        let l = loss(scale);
        if l < best.1 {
            best = (scale, l);
        }
    }
    best.0
}

/// Whole groups of a block's 4-bit values as they lie: the integers two a byte (stored as
/// value + 8, in [`Q4Store`]'s layout) and their f16 scales.
#[derive(Debug, Clone, Copy)]
pub struct Q4Block<'a> {
    /// Two values a byte ([`Q4Store`]'s layout).
    pub q: &'a [u8],
    /// One f16 scale per group.
    pub scales: &'a [u16],
    /// Values per scale.
    pub group: usize,
}

impl Q4Block<'_> {
    /// The values as 8-bit integers (-8..=7) into `out` (two per byte of [`Self::q`]).
    pub fn unpack(&self, out: &mut [i8]) {
        #[cfg(target_arch = "x86_64")]
        if self.group == 32 && std::arch::is_x86_feature_detected!("avx2") {
            let pairs = self.q.len().min(out.len() / 2) / 32;
            let (q, rest_q) = self.q.split_at(32 * pairs);
            let (o, rest_o) = out.split_at_mut(64 * pairs);
            // SAFETY: AVX2 checked just above.
            unsafe { unpack_pairs_avx2(q, o) };
            return Self { q: rest_q, ..*self }.unpack_groups(rest_o);
        }
        self.unpack_groups(out)
    }

    /// [`Self::unpack`] a group at a time.
    fn unpack_groups(&self, out: &mut [i8]) {
        let half = self.group / 2;
        for (o, bytes) in out.chunks_exact_mut(self.group).zip(self.q.chunks_exact(half)) {
            let (low, high) = o.split_at_mut(half);
            if half.is_multiple_of(8) {
                let eights = low.chunks_exact_mut(8).zip(high.chunks_exact_mut(8));
                for ((l, h), b) in eights.zip(bytes.chunks_exact(8)) {
                    let x = u64::from_le_bytes(std::array::from_fn(|i| b[i]));
                    let put =
                        |dst: &mut [i8], v: u64| dst.iter_mut().zip(v.to_le_bytes()).for_each(|(d, s)| *d = s as i8);
                    put(l, signed(x & NIBBLES));
                    put(h, signed((x >> 4) & NIBBLES));
                }
            } else {
                for ((l, h), b) in low.iter_mut().zip(high.iter_mut()).zip(bytes) {
                    *l = (b & 0x0f) as i8 - 8;
                    *h = (b >> 4) as i8 - 8;
                }
            }
        }
    }
}

/// [`Q4Block::unpack`] of pairs of groups of 32 with AVX2: 32 bytes (two groups) at a time,
/// the low nibbles and high ones of each group's 16 bytes put side by side (lanes of 128
/// bits) and 8 taken off. Every whole 32 bytes of `q` that `out` has room for.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn unpack_pairs_avx2(q: &[u8], out: &mut [i8]) {
    use std::arch::x86_64::*;
    let (nibble, eight) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi8(8));
    for (o, b) in out.chunks_exact_mut(64).zip(q.chunks_exact(32)) {
        // SAFETY: `b` holds 32 bytes and `o` 64 (whole chunks); unaligned loads and stores.
        unsafe {
            let x = _mm256_loadu_si256(b.as_ptr() as *const __m256i);
            let low = _mm256_and_si256(x, nibble);
            let high = _mm256_and_si256(_mm256_srli_epi16::<4>(x), nibble);
            let first = _mm256_sub_epi8(_mm256_permute2x128_si256::<0x20>(low, high), eight);
            let second = _mm256_sub_epi8(_mm256_permute2x128_si256::<0x31>(low, high), eight);
            _mm256_storeu_si256(o.as_mut_ptr() as *mut __m256i, first);
            _mm256_storeu_si256(o.as_mut_ptr().add(32) as *mut __m256i, second);
        }
    }
}

/// Every byte's low nibble.
const NIBBLES: u64 = 0x0f0f_0f0f_0f0f_0f0f;

/// Eight stored nibbles (bytes of 0..=15) as the bytes of the integers they hold (-8..=7):
/// `n ^ 8` is `n - 8` for `n >= 8` and `n + 8` below, where the byte's top four bits must
/// be set; those are the bytes whose `n ^ 8` has bit 3 set. No carry crosses a byte.
fn signed(n: u64) -> u64 {
    let w = n ^ 0x0808_0808_0808_0808;
    w | (((w >> 3) & 0x0101_0101_0101_0101) * 0xf0)
}

/// The normalized Walsh-Hadamard transform of `x` in place: orthogonal and symmetric, so
/// its own inverse. `x.len()` must be a power of two (a 4-bit pool's heads are).
pub fn rotate(x: &mut [f32]) {
    let n = x.len();
    let mut h = 1;
    while h < n {
        for pair in x.chunks_exact_mut(2 * h) {
            let (first, second) = pair.split_at_mut(h);
            for (a, b) in first.iter_mut().zip(second) {
                (*a, *b) = (*a + *b, *a - *b);
            }
        }
        h *= 2;
    }
    let s = 1.0 / (n as f32).sqrt();
    x.iter_mut().for_each(|v| *v *= s);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unpacking with AVX2 (where the CPU has it) and eight nibbles at a time give what
    /// one nibble at a time gives, for every byte value and whole and odd numbers of groups
    /// of 32, 16 and 8.
    #[test]
    fn every_unpacking_gives_each_nibble_less_8() {
        for group in [32, 16, 8] {
            // (16 groups of 32 hold every byte value: 37 is prime to 256.)
            for groups in [1, 2, 3, 5, 16] {
                let q: Vec<u8> = (0..groups * group / 2).map(|i| (i * 37 + 11) as u8).collect();
                let scales = vec![0u16; groups];
                let block = Q4Block {
                    q: &q,
                    scales: &scales,
                    group,
                };
                let (mut fast, mut groupwise) = (vec![0i8; groups * group], vec![0i8; groups * group]);
                block.unpack(&mut fast);
                block.unpack_groups(&mut groupwise);
                let half = group / 2;
                let want: Vec<i8> = (0..groups * group)
                    .map(|at| {
                        let (g, k) = (at / group, at % group);
                        let byte = q[g * half + k % half];
                        (if k < half { byte & 0x0f } else { byte >> 4 }) as i8 - 8
                    })
                    .collect();
                assert_eq!(fast, want, "group {group} x {groups}");
                assert_eq!(groupwise, want, "group {group} x {groups}");
            }
        }
    }
}
