//! Our own quantized weight formats and integer matmul kernels for the CPU.
//!
//! candle's quantized kernels decode one token at about half the memory bandwidth for
//! Q4_K and well below it for Q8_0, so on CPU the linear layers use these instead:
//! weights repacked 16 rows at a time (`q8`, `q4`) so that one 512-bit load feeds 16
//! row accumulators, activations quantized to 8 bits (`activation`: one scale per block of
//! 32 for q8_0, per super-block of up to 256 for q4k), and
//! dot products on the integer units (AVX-512 VNNI, else AVX2, else portable code; picked
//! at run time). [`PackedWeight::matmul_reference`] is the slow f32 twin the tests compare
//! the kernels against.

pub(crate) mod activation;
mod q4;
mod q8;

use rayon::prelude::*;

use activation::{QuantizedRows, BLOCK};

use super::pages;
use super::spare::Spare;

/// Rows packed together.
pub const GROUP: usize = 16;

/// Bytes of quantized prompt activations processed against a stretch of weights at once.
const TOKEN_CHUNK_BYTES: usize = 256 * 1024;

/// `x` rounded to the nearest integer (ties to even) after clamping to `[lo, hi]`; a NaN
/// stays NaN. `f32::round` is a library call, and packing a model rounds billions of values.
#[inline(always)]
pub fn round_clamped(x: f32, lo: f32, hi: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: adding it leaves no fraction bits.
    (x.clamp(lo, hi) + MAGIC) - MAGIC
}

/// One 64-byte, 64-byte aligned cache line of packed weights.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Line(pub [u8; 64]);

/// Asks for the `n` lines from `at` into the caches: a hint, never a fault, whatever the
/// address (so `at` may lie past a weight's end).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch_lines(at: *const Line, n: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    for p in 0..n {
        // SAFETY: SSE is part of every x86_64 CPU, and a prefetch reads nothing: it cannot
        // fault, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(p) as *const i8) };
    }
}

/// The quantized activations of up to `T` tokens, as the kernels read them.
pub struct Acts<'a, const T: usize> {
    /// Quantized values per token.
    pub qs: [&'a [i8]; T],
    /// Block scales per token.
    pub scales: [&'a [f32]; T],
    /// Block sums per token.
    pub sums: [&'a [i32]; T],
    /// Block `scale * sum` per token.
    pub scaled_sums: [&'a [f32]; T],
    /// Paired block sums per token (see `QuantizedRows::pair_sums`).
    pub pair_sums: [&'a [i32]; T],
    /// Block `-128 * sum` per token.
    pub offsets: [&'a [i32]; T],
}

/// A packed weight format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackedFormat {
    /// 8-bit blocks of 32 with f16 scales (8.5 bits per weight).
    Q8_0,
    /// 4-bit sub-blocks of 32 with 8-bit scales and minimums (4.625 bits per weight).
    Q4K,
}

impl From<candle_core::quantized::GgmlDType> for PackedFormat {
    /// Q4_K maps to [`PackedFormat::Q4K`], everything else to [`PackedFormat::Q8_0`].
    fn from(d: candle_core::quantized::GgmlDType) -> Self {
        match d {
            candle_core::quantized::GgmlDType::Q4K => Self::Q4K,
            _ => Self::Q8_0,
        }
    }
}

/// A `[rows, cols]` weight matrix in a packed format (`cols` a multiple of 32).
#[derive(Debug)]
pub struct PackedWeight {
    format: PackedFormat,
    rows: usize,
    cols: usize,
    lines: pages::Buffer<Line>,
    meta: pages::Buffer<u8>,
}

/// Which kernel family the CPU runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// Plain Rust.
    Portable,
    /// AVX2 + FMA + F16C.
    Avx2,
    /// AVX-512 F/BW/VNNI.
    Avx512,
}

impl Isa {
    /// The best kernel family this CPU supports.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f") && has!("avx512bw") && has!("avx512vnni") {
                return Self::Avx512;
            }
            if has!("avx2") && has!("fma") && has!("f16c") {
                return Self::Avx2;
            }
        }
        Self::Portable
    }

    /// Every family this CPU can run, best first.
    pub fn available() -> Vec<Self> {
        let best = Self::detect();
        [Self::Avx512, Self::Avx2, Self::Portable]
            .into_iter()
            .filter(|i| *i as u8 <= best as u8)
            .collect()
    }
}

impl PackedWeight {
    /// Packs `w: [rows, cols]` (row-major f32); `None` when `cols` is not a multiple of 32.
    /// Row groups are quantized in parallel.
    pub fn pack(w: &[f32], rows: usize, cols: usize, format: PackedFormat) -> Option<Self> {
        if w.len() != rows * cols {
            return None;
        }
        Self::pack_with(rows, cols, format, |first, dst| {
            dst.copy_from_slice(&w[first * cols..first * cols + dst.len()])
        })
    }

    /// Packs a `[rows, cols]` matrix whose rows `first..` are written as f32 into `dst` by
    /// `fill(first, dst)` (a whole number of rows, at most 16), so that no f32 copy of the
    /// whole matrix is ever made. `None` when `cols` is not a multiple of 32.
    pub fn pack_with(
        rows: usize,
        cols: usize,
        format: PackedFormat,
        fill: impl Fn(usize, &mut [f32]) + Sync,
    ) -> Option<Self> {
        Self::pack_groups(rows, cols, format, cols, fill, |block, lines, meta| match format {
            PackedFormat::Q8_0 => q8::pack_group(block, cols, lines, meta),
            PackedFormat::Q4K => q4::pack_group(block, cols, lines, meta),
        })
    }

    /// Packs a Q8_0 matrix from llama.cpp's blocks as stored, keeping their numbers
    /// (scales and 8-bit values are copied): `fill(first, dst)` writes the blocks of rows
    /// `first..` (a whole number of rows, at most 16; 34 bytes per 32 columns) into `dst`.
    /// `None` when `cols` is not a multiple of 32.
    pub fn pack_q8_0_blocks(rows: usize, cols: usize, fill: impl Fn(usize, &mut [u8]) + Sync) -> Option<Self> {
        let row_bytes = cols / BLOCK * q8::GGML_BLOCK;
        Self::pack_groups(rows, cols, PackedFormat::Q8_0, row_bytes, fill, |buf, lines, meta| {
            q8::pack_group_blocks(buf, cols, lines, meta)
        })
    }

    /// Packs a Q4_K matrix from llama.cpp's blocks as stored, keeping their numbers (see
    /// `q4::pack_group_blocks`): `fill(first, dst)` writes the blocks of rows `first..` (a
    /// whole number of rows, at most 16; 144 bytes per 256 columns) into `dst`. `None`
    /// unless `cols` is a multiple of 256.
    pub fn pack_q4k_blocks(rows: usize, cols: usize, fill: impl Fn(usize, &mut [u8]) + Sync) -> Option<Self> {
        if !cols.is_multiple_of(256) || q4::sub_blocks(cols) != 8 {
            return None;
        }
        let row_bytes = cols / 256 * q4::GGML_BLOCK;
        Self::pack_groups(rows, cols, PackedFormat::Q4K, row_bytes, fill, |buf, lines, meta| {
            q4::pack_group_blocks(buf, cols, lines, meta)
        })
    }

    /// The packing loop shared by every source: row groups in parallel, each read by
    /// `fill(first, dst)` into a buffer of 16 rows of `per_row` values (rows past the
    /// matrix zero) and packed by `pack(buffer, lines, meta)`.
    fn pack_groups<T: Copy + Default + Send>(
        rows: usize,
        cols: usize,
        format: PackedFormat,
        per_row: usize,
        fill: impl Fn(usize, &mut [T]) + Sync,
        pack: impl Fn(&[T], &mut [Line], &mut [u8]) + Sync,
    ) -> Option<Self> {
        if cols == 0 || !cols.is_multiple_of(BLOCK) {
            return None;
        }
        let groups = rows.div_ceil(GROUP);
        let (lines_per, meta_per) = Self::group_sizes(format, cols);
        let mut lines = pages::Buffer::<Line>::zeroed(groups * lines_per);
        let mut meta = pages::Buffer::<u8>::zeroed(groups * meta_per);
        lines
            .par_chunks_mut(lines_per)
            .zip(meta.par_chunks_mut(meta_per))
            .enumerate()
            .for_each_init(
                || vec![T::default(); GROUP * per_row],
                |buf, (g, (lines, meta))| {
                    let have = (rows - g * GROUP).min(GROUP) * per_row;
                    fill(g * GROUP, &mut buf[..have]);
                    buf[have..].fill(T::default());
                    pack(buf, lines, meta);
                },
            );
        Some(Self {
            format,
            rows,
            cols,
            lines,
            meta,
        })
    }

    /// Lines and meta bytes of one group.
    fn group_sizes(format: PackedFormat, cols: usize) -> (usize, usize) {
        let blocks = cols / BLOCK;
        match format {
            PackedFormat::Q8_0 => (blocks * q8::TILE / 64, blocks * GROUP * 2),
            PackedFormat::Q4K => {
                let sub = q4::sub_blocks(cols);
                (blocks * GROUP * BLOCK / 2 / 64, blocks / sub * q4::meta_len(sub))
            }
        }
    }

    /// The format.
    pub fn format(&self) -> PackedFormat {
        self.format
    }

    /// `(rows, cols)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// Bytes of packed data.
    pub fn bytes(&self) -> usize {
        self.lines.len() * 64 + self.meta.len()
    }

    /// Row `r` dequantized to f32.
    pub fn row(&self, r: usize) -> Vec<f32> {
        let (g, i) = (r / GROUP, r % GROUP);
        let (lp, mp) = Self::group_sizes(self.format, self.cols);
        let (lines, meta) = (&self.lines[g * lp..(g + 1) * lp], &self.meta[g * mp..(g + 1) * mp]);
        (0..self.cols)
            .map(|c| match self.format {
                PackedFormat::Q8_0 => q8::weight(lines, meta, i, c),
                PackedFormat::Q4K => q4::weight(lines, meta, self.cols, i, c),
            })
            .collect()
    }

    /// `x: [m, cols]` (row-major f32) times the transposed weights: `[m, rows]`, computed
    /// with the kernels of `isa`; an error when this CPU cannot run them (see
    /// [`Isa::available`]) or when `x` is not `m` rows of `cols`. Buffers come from `spare`
    /// (give the result back to it to reuse its memory, as a batched step does).
    pub fn matmul_with(&self, x: &[f32], m: usize, isa: Isa, spare: &mut Spare) -> crate::Result<Vec<f32>> {
        if !Isa::available().contains(&isa) {
            return Err(crate::Error::Unsupported(format!("{isa:?} kernels on this CPU")));
        }
        check_rows(&[self], x, m)?;
        Ok(Self::run_many(&[self], x, m, isa, spare).pop().unwrap_or_default())
    }

    /// [`Self::matmul_with`] on the best kernels of this CPU.
    pub fn matmul(&self, x: &[f32], m: usize) -> crate::Result<Vec<f32>> {
        self.matmul_with(x, m, Isa::detect(), &mut Spare::default())
    }

    /// Several weights with the same `cols` applied to the same `x: [m, cols]` on the best
    /// kernels of this CPU: the activations are quantized once and all row groups run in
    /// one parallel region. An error when the widths do not match.
    pub fn matmul_many(ws: &[&Self], x: &[f32], m: usize) -> crate::Result<Vec<Vec<f32>>> {
        Self::matmul_many_spare(ws, x, m, &mut Spare::default())
    }

    /// [`Self::matmul_many`] with its outputs and quantized activations in buffers taken
    /// from `spare` (the activation buffers go back to it).
    pub fn matmul_many_spare(ws: &[&Self], x: &[f32], m: usize, spare: &mut Spare) -> crate::Result<Vec<Vec<f32>>> {
        check_rows(ws, x, m)?;
        Ok(Self::run_many(ws, x, m, Isa::detect(), spare))
    }

    /// The work of [`Self::matmul_many`]; `isa` must be supported and the shapes checked.
    fn run_many(ws: &[&Self], x: &[f32], m: usize, isa: Isa, spare: &mut Spare) -> Vec<Vec<f32>> {
        let Some(cols) = ws.first().map(|w| w.cols) else {
            return Vec::new();
        };
        // Activations quantized once per span the weights need (one form, or two for a
        // checkpoint mixing 8- and 4-bit layers).
        let mut forms: Vec<QuantizedRows> = Vec::new();
        for w in ws {
            if !forms.iter().any(|a| a.span == w.act_span()) {
                forms.push(spare.take_acts().refill(x, cols, w.act_span()));
            }
        }
        let total: usize = ws.iter().map(|w| w.rows.div_ceil(GROUP)).sum();
        // Decode steps (up to 8 sequences) stream weights: small tasks balance the two cores'
        // memory streams. Prefill computes: few large tasks re-read the activations least.
        let tasks_per_thread = if m <= 8 { 16 } else { 2 };
        let per_task = total
            .div_ceil(rayon::current_num_threads().max(1) * tasks_per_thread)
            .max(1);
        // Outputs `[m, groups * 16]`, written in place: each task owns whole row groups,
        // that is whole 16-column stripes of every token's row.
        let mut ys: Vec<Vec<f32>> = ws.iter().map(|w| spare.take(m * w.padded_rows())).collect();
        let mut tasks = Vec::new();
        for (w, y) in ws.iter().zip(ys.iter_mut()) {
            let groups = w.rows.div_ceil(GROUP);
            let out = Stripes {
                ptr: y.as_mut_ptr(),
                stride: w.padded_rows(),
            };
            let Some(acts) = forms.iter().find(|a| a.span == w.act_span()) else {
                continue;
            };
            for first in (0..groups).step_by(per_task) {
                tasks.push((*w, acts, first..(first + per_task).min(groups), out));
            }
        }
        // Prompt tokens go in chunks whose activations stay in the core's L2 cache while
        // the task's weights stream past them.
        let chunk = (TOKEN_CHUNK_BYTES / cols).next_multiple_of(8).max(8);
        // One task a split: rayon would otherwise run runs of tasks as one sequential piece
        // that the other thread cannot take, and the thread that finishes first waited
        // (3.5-4 ms of a 45-ms decoding step on 2 cores; ~1.2 ms so).
        tasks
            .into_par_iter()
            .with_max_len(1)
            .for_each(|(w, acts, groups, out)| w.run_task(acts, groups, (m, chunk), isa, out));
        forms.into_iter().for_each(|a| spare.give_acts(a));
        ws.iter().zip(ys).map(|(w, y)| w.unpad(y, m)).collect()
    }

    /// One task of [`Self::run_many`]: the row groups `groups` for every token of `acts`
    /// (`m` of them, `chunk` at a time), written into `out`.
    fn run_task(
        &self,
        acts: &QuantizedRows,
        groups: std::ops::Range<usize>,
        (m, chunk): (usize, usize),
        isa: Isa,
        out: Stripes,
    ) {
        let (lp, mp) = Self::group_sizes(self.format, self.cols);
        for start in (0..m).step_by(chunk) {
            let tokens = start..(start + chunk).min(m);
            for g in groups.clone() {
                let (lines, meta) = (&self.lines[g * lp..(g + 1) * lp], &self.meta[g * mp..(g + 1) * mp]);
                self.group_tokens(lines, meta, acts, tokens.clone(), isa, |t, vals| {
                    // SAFETY: `t < m` and `g` is a group of this weight, so the 16 values lie
                    // inside the output (`m * padded_rows` long, alive until `run_many`'s
                    // parallel loop ends); no other task writes group `g`.
                    unsafe { out.write(t, g, vals) }
                });
            }
        }
    }

    /// Values per activation scale this format's kernels take: one block for Q8_0, one
    /// super-block for q4k (whose kernel adds its sub-blocks' integer sums first).
    fn act_span(&self) -> usize {
        match self.format {
            PackedFormat::Q8_0 => BLOCK,
            PackedFormat::Q4K => q4::sub_blocks(self.cols) * BLOCK,
        }
    }

    /// Rows rounded up to whole groups.
    fn padded_rows(&self) -> usize {
        self.rows.div_ceil(GROUP) * GROUP
    }

    /// `[m, padded_rows]` -> `[m, rows]` (a copy only when rows are not whole groups).
    fn unpad(&self, mut y: Vec<f32>, m: usize) -> Vec<f32> {
        let padded = self.padded_rows();
        if padded == self.rows || m == 1 {
            y.truncate(m * self.rows);
            return y;
        }
        y.chunks(padded).flat_map(|r| &r[..self.rows]).copied().collect()
    }

    /// One group against tokens `tokens`, up to 8 tokens per kernel call with AVX-512's 32
    /// registers (4 otherwise: the weight lines are unpacked once per call, so more tokens
    /// per call amortise them; every token's sums run in the same order either way);
    /// `sink(t, values)` receives the group's 16 outputs for token `t`.
    fn group_tokens(
        &self,
        lines: &[Line],
        meta: &[u8],
        acts: &QuantizedRows,
        tokens: std::ops::Range<usize>,
        isa: Isa,
        mut sink: impl FnMut(usize, &[f32; GROUP]),
    ) {
        let mut t = tokens.start;
        // Up to 8 tokens share one pass over the weights on every vector unit (on AVX2 too:
        // +8% q8_0 prefill, +16% q8_0 and +4% q4k decode of 8 sequences on Zen 2, 2026-12-05).
        while t < tokens.end {
            let left = tokens.end - t;
            let n = if left >= 8 { 8 } else { left.min(4) };
            match n {
                8 => self.kernel::<8>(lines, meta, acts, t, isa, &mut sink),
                4 => self.kernel::<4>(lines, meta, acts, t, isa, &mut sink),
                3 => self.kernel::<3>(lines, meta, acts, t, isa, &mut sink),
                2 => self.kernel::<2>(lines, meta, acts, t, isa, &mut sink),
                _ => self.kernel::<1>(lines, meta, acts, t, isa, &mut sink),
            }
            t += n;
        }
    }

    /// Tokens `first..first + T` against one group, each result handed to `sink`.
    fn kernel<const T: usize>(
        &self,
        lines: &[Line],
        meta: &[u8],
        acts: &QuantizedRows,
        first: usize,
        isa: Isa,
        sink: &mut impl FnMut(usize, &[f32; GROUP]),
    ) {
        let a = Acts::<T> {
            qs: std::array::from_fn(|t| acts.row(first + t)),
            scales: std::array::from_fn(|t| acts.row_scales(first + t)),
            sums: std::array::from_fn(|t| acts.row_sums(first + t)),
            scaled_sums: std::array::from_fn(|t| acts.row_scaled_sums(first + t)),
            pair_sums: std::array::from_fn(|t| acts.row_pair_sums(first + t)),
            offsets: std::array::from_fn(|t| acts.row_offsets(first + t)),
        };
        let sub = q4::sub_blocks(self.cols);
        let mut res = [[0f32; GROUP]; T];
        match (self.format, isa) {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `isa` is one this CPU supports (the caller's contract, checked by
            // `Isa::detect`).
            (PackedFormat::Q8_0, Isa::Avx512) => unsafe { q8::group_dot_avx512(lines, meta, &a, &mut res) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `isa` is one this CPU supports (the caller's contract, checked by `Isa::detect`).
            (PackedFormat::Q8_0, Isa::Avx2) => unsafe { q8::group_dot_avx2(lines, meta, &a, &mut res) },
            (PackedFormat::Q8_0, _) => q8::group_dot_portable(lines, meta, &a, &mut res),
            #[cfg(target_arch = "x86_64")]
            // The kernel takes one activation scale per super-block (checked here).
            // SAFETY: `isa` is one this CPU supports (the caller's contract, checked by `Isa::detect`).
            (PackedFormat::Q4K, Isa::Avx512) if acts.span == sub * BLOCK => unsafe {
                q4::group_dot_avx512(lines, meta, sub, &a, &mut res)
            },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `isa` is one this CPU supports (the caller's contract, checked by `Isa::detect`).
            (PackedFormat::Q4K, Isa::Avx2) => unsafe { q4::group_dot_avx2(lines, meta, sub, &a, &mut res) },
            (PackedFormat::Q4K, _) => q4::group_dot_portable(lines, meta, sub, &a, &mut res),
        }
        for (t, vals) in res.iter().enumerate() {
            sink(first + t, vals);
        }
    }

    /// Slow, obviously correct twin of [`Self::matmul`]: every weight dequantized, f32
    /// activations, f64 sums.
    pub fn matmul_reference(&self, x: &[f32], m: usize) -> Vec<f32> {
        let rows: Vec<Vec<f32>> = (0..self.rows).map(|r| self.row(r)).collect();
        let mut y = Vec::with_capacity(m * self.rows);
        for xr in x.chunks(self.cols) {
            for w in &rows {
                y.push(w.iter().zip(xr).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() as f32);
            }
        }
        y
    }
}

/// Checks that every weight takes `cols`-wide rows and that `x` is `m` such rows: what the
/// kernels' unchecked reads rely on.
fn check_rows(ws: &[&PackedWeight], x: &[f32], m: usize) -> crate::Result<()> {
    let Some(cols) = ws.first().map(|w| w.cols) else {
        return Ok(());
    };
    if ws.iter().any(|w| w.cols != cols) || Some(x.len()) != m.checked_mul(cols) {
        return Err(crate::Error::Candle(candle_core::Error::Msg(format!(
            "packed matmul: {} inputs are not {m} rows of {cols}",
            x.len()
        ))));
    }
    Ok(())
}

/// A row-major `[m, stride]` output that tasks fill in disjoint 16-column stripes.
#[derive(Clone, Copy)]
struct Stripes {
    ptr: *mut f32,
    stride: usize,
}

// SAFETY: tasks only write through `Stripes::write` to the stripes of the groups they own,
// which never overlap, while the buffer outlives the parallel loop.
unsafe impl Send for Stripes {}
// SAFETY: as for `Send` just above: disjoint writes, a buffer that outlives the loop.
unsafe impl Sync for Stripes {}

impl Stripes {
    /// Writes group `g`'s 16 values of token `t`.
    ///
    /// # Safety
    /// `t * stride + (g + 1) * 16` must be within the buffer, and no other thread may
    /// access those 16 values meanwhile.
    unsafe fn write(self, t: usize, g: usize, vals: &[f32; GROUP]) {
        // SAFETY: in bounds and unshared (the caller's contract).
        unsafe { std::ptr::copy_nonoverlapping(vals.as_ptr(), self.ptr.add(t * self.stride + g * GROUP), GROUP) }
    }
}

#[cfg(test)]
pub(crate) mod tests;
