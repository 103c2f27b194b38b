//! q8_0 storage for the KV pool (llama.cpp's `-ctk q8_0 -ctv q8_0`): 8-bit integers with one
//! f16 scale per group of a position's head; keys in their transposed tiles' order
//! (`[head_dim / 4, padded, 4]` within a tile), values in runs.

use half::f16;

use super::super::attention_q8::QUAD;
use super::super::dequant;

/// How a q8_0 buffer groups its values under scales (a 4-bit one takes its group and head
/// width).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Q8Shape {
    /// Values per scale.
    pub group: usize,
    /// Width of a head.
    pub head_dim: usize,
    /// Keys: `(head_dim, padded)` of the transposed tiles, whose groups run down a column
    /// (one position's values of consecutive dimensions); values: `None`, groups are runs.
    pub transposed: Option<(usize, usize)>,
}

impl Q8Shape {
    /// Where value `at` (an index of the transposed tile for keys) lies among the stored
    /// values. Keys: tile `t`, dimension `i`, position `p` -> `[t][i / 4][p][i % 4]`.
    pub fn place(&self, at: usize) -> usize {
        match self.transposed {
            None => at,
            Some((head_dim, padded)) => {
                let tile = head_dim * padded;
                let (t, r) = (at / tile, at % tile);
                let (i, p) = (r / padded, r % padded);
                t * tile + ((i / QUAD) * padded + p) * QUAD + i % QUAD
            }
        }
    }

    /// The scale of value `at`. Keys: tile `t`, dimension `i`, position `p` ->
    /// `[t][i / group][p]` (so that a row of a tile's scales lines up with its positions).
    pub fn scale_index(&self, at: usize) -> usize {
        let g = self.group;
        match self.transposed {
            None => at / g,
            Some((head_dim, padded)) => {
                let tile = head_dim * padded;
                let (t, r) = (at / tile, at % tile);
                t * (tile / g) + (r / padded / g) * padded + r % padded
            }
        }
    }
}

/// q8_0 storage: `q[i] * scale(i)`, one f16 scale per group (its largest magnitude / 127).
pub(crate) struct Q8Store {
    /// The values, keys in their tiles' order ([`Q8Shape::place`]).
    pub q: Vec<i8>,
    /// One f16 scale per group ([`Q8Shape::scale_index`]).
    pub scales: Vec<u16>,
    /// How they are grouped and placed.
    pub shape: Q8Shape,
}

impl Q8Store {
    /// Zeroed storage for `len` values (zero scales: every value reads as 0).
    pub fn new(len: usize, shape: Q8Shape) -> Self {
        Self {
            q: vec![0i8; len],
            scales: vec![0u16; len / shape.group],
            shape,
        }
    }

    fn place(&self, at: usize) -> usize {
        self.shape.place(at)
    }

    fn scale_index(&self, at: usize) -> usize {
        self.shape.scale_index(at)
    }

    pub fn set_group(&mut self, ats: impl Iterator<Item = usize> + Clone, values: &[f32]) {
        let amax = values.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = f16::from_f32(amax / 127.0);
        let inv = match scale.to_f32() {
            s if s > 0.0 => 1.0 / s,
            _ => 0.0,
        };
        let mut first = None;
        for (at, v) in ats.zip(values) {
            let place = self.place(at);
            self.q[place] = (v * inv).round().clamp(-127.0, 127.0) as i8;
            first.get_or_insert(at);
        }
        if let Some(at) = first {
            let s = self.scale_index(at);
            self.scales[s] = scale.to_bits();
        }
    }

    pub fn copy_within(&mut self, from: usize, len: usize, to: usize) {
        let (sf, st) = (self.scale_index(from), self.scale_index(to));
        // Values: whole groups; keys: one row of positions, whose scales are a run too.
        let n = match self.shape.transposed {
            None => {
                self.q.copy_within(from..from + len, to);
                len / self.shape.group
            }
            Some(_) => {
                for k in 0..len {
                    let (a, b) = (self.place(from + k), self.place(to + k));
                    self.q[b] = self.q[a];
                }
                len
            }
        };
        self.scales.copy_within(sf..sf + n, st);
    }

    /// Values `at..at + out.len()` as f32 (a whole key tile, or whole value groups).
    pub fn read(&self, at: usize, out: &mut [f32]) {
        let g = self.shape.group;
        match self.shape.transposed {
            None => {
                let s = self.scale_index(at);
                let scales = &self.scales[s..s + out.len().div_ceil(g)];
                dequant::groups(&self.q[at..at + out.len()], scales, g, out)
            }
            Some(_) => {
                for (k, o) in out.iter_mut().enumerate() {
                    let scale = f16::from_bits(self.scales[self.scale_index(at + k)]).to_f32();
                    *o = f32::from(self.q[self.place(at + k)]) * scale;
                }
            }
        }
    }
}
