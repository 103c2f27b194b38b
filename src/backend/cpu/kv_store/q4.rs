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
    /// Two values a byte: the one at an even index in the low nibble.
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

    fn nibble(&self, at: usize) -> u8 {
        (self.q[at / 2] >> (4 * (at % 2))) & 0x0f
    }

    fn set_nibble(&mut self, at: usize, n: u8) {
        let shift = 4 * (at % 2);
        let byte = &mut self.q[at / 2];
        *byte = (*byte & !(0x0f << shift)) | ((n & 0x0f) << shift);
    }

    /// Stores one group of (rotated) values from `at`, as llama.cpp's q4_0: the value of
    /// largest magnitude is -8 steps, the others rounded to the nearest of -8..=7 steps.
    pub fn set_group(&mut self, at: usize, values: &[f32]) {
        let max = values.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
        let scale = f16::from_f32(max / -8.0);
        let inv = match scale.to_f32() {
            s if s != 0.0 => 1.0 / s,
            _ => 0.0,
        };
        for (k, v) in values.iter().enumerate() {
            let n = ((v * inv).round() + 8.0).clamp(0.0, 15.0) as u8;
            self.set_nibble(at + k, n);
        }
        self.scales[at / self.group] = scale.to_bits();
    }

    /// Copies `len` values (whole groups) from `from` to `to`.
    pub fn copy_within(&mut self, from: usize, len: usize, to: usize) {
        if [from, to, len].iter().all(|x| x.is_multiple_of(2)) {
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

/// Whole groups of a block's 4-bit values as they lie: the integers two a byte (the value at
/// an even index in the low nibble, stored as value + 8) and their f16 scales.
#[derive(Debug, Clone, Copy)]
pub struct Q4Block<'a> {
    /// Two values a byte.
    pub q: &'a [u8],
    /// One f16 scale per group.
    pub scales: &'a [u16],
}

impl Q4Block<'_> {
    /// The values as 8-bit integers (-8..=7) into `out` (two per byte of [`Self::q`]).
    pub fn unpack(&self, out: &mut [i8]) {
        for (pair, byte) in out.chunks_exact_mut(2).zip(self.q) {
            pair[0] = (byte & 0x0f) as i8 - 8;
            pair[1] = (byte >> 4) as i8 - 8;
        }
    }
}

/// The normalized Walsh-Hadamard transform of `x` in place: orthogonal and symmetric, so
/// its own inverse. `x.len()` must be a power of two (a 4-bit pool's heads are).
pub fn rotate(x: &mut [f32]) {
    let n = x.len();
    let mut h = 1;
    while h < n {
        for start in (0..n).step_by(2 * h) {
            for j in start..start + h {
                let (a, b) = (x[j], x[j + h]);
                x[j] = a + b;
                x[j + h] = a - b;
            }
        }
        h *= 2;
    }
    let s = 1.0 / (n as f32).sqrt();
    x.iter_mut().for_each(|v| *v *= s);
}
