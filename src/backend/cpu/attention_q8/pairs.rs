//! A chunk's q8_0 value blocks converted once into bf16 pairs of positions for all the rows
//! of a tile, then each row's weighted sum over the whole chunk with `vdpbf16ps` (AVX-512
//! BF16): one instruction per head, two positions and sixteen dimensions, half the fused
//! multiply-adds of the float path, the sums in registers from the chunk's first position
//! to its last. A lone row (a decoding step) converts each pair in registers instead
//! ([`Pairs::add_lone`], byte permutes: [`super::bf16`]), the same sums.
//!
//! `vdpbf16ps` adds to each f32 lane the product of the odd elements of its pair, rounded,
//! then the even ones', rounded (the products of two bf16 are exact in f32): per lane the
//! two fused multiply-adds of [`super::axpys_portable`] on a pair in [`super::pair_order`].
//! Its weights are [`super::bf16_weight`]s, its values 8-bit integers (each a bf16), and
//! every sum starts from zero, so no input is subnormal, and no sum either (every product is
//! a multiple of 2^-107), where the instruction would flush them: the bits are the
//! reference's.

use std::arch::x86_64::*;

use super::bf16::{self, bf16_bits, interleave_index, nibble_index};
use super::ValueBlock;

mod scales;
use scales::widen_chunk;

/// Dimensions of one register.
const LANES: usize = 16;

/// Values per scale of [`NibbleBlock`]s.
pub const NIBBLE_GROUP: usize = 32;

/// One block's 4-bit values of one KV head, `[n, d]` in llama.cpp's q4_0 layout: for each
/// group of 32 of a position's dimensions 16 bytes, dimension `k`'s value + 8 in the low
/// nibble of byte `k` for `k < 16`, in the high nibble of byte `k - 16` above; one f16
/// scale per position and group.
#[derive(Debug, Clone, Copy)]
pub struct NibbleBlock<'a> {
    /// `n * d / 2` bytes.
    pub q: &'a [u8],
    /// `[n, d / 32]` scales as f16 bits.
    pub scales: &'a [u16],
}

/// Pairs of positions a chunk holds at most.
const ROOM: usize = 512;

/// Whether this CPU runs the kernel.
pub fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512bf16")
}

/// Whether this CPU runs the kernel and converts values with byte permutes (AVX-512 VBMI),
/// cheap enough to pay for a lone row.
pub fn converts_fast() -> bool {
    available() && std::arch::is_x86_feature_detected!("avx512vbmi")
}

/// A chunk's values as bf16 pairs and their scales, and a row's weights, kept between
/// chunks.
#[derive(Debug, Default)]
pub struct Pairs {
    /// `values[p * d + i]`: dimension `i` of the chunk's positions `2p` (the low half) and
    /// `2p + 1`.
    values: Vec<u32>,
    /// The scales by group, `[groups, 2 * ROOM]`.
    scales: Vec<f32>,
    /// A block's scales as stored, widened.
    flat: Vec<f32>,
    /// A row's weights as bf16 pairs, `[groups, heads, ROOM]`.
    words: Vec<u32>,
    /// Positions pushed (the last pair's odd one zero where this is odd).
    n: usize,
    d: usize,
    group: usize,
    /// Whether the conversion may use byte permutes ([`bf16::convert_vbmi`]).
    vbmi: bool,
}

impl Pairs {
    /// Starts a chunk of at most `positions` positions of `d` dimensions in groups of
    /// `group`, pushed in blocks of `bs`; `None` where the shapes do not fit the kernel (or
    /// the CPU lacks it).
    pub fn start(&mut self, positions: usize, (d, group): (usize, usize), bs: usize) -> Option<ChunkPairs<'_>> {
        let fits = positions <= 2 * ROOM
            && bs.is_multiple_of(2)
            && d.is_multiple_of(4 * LANES)
            && group.is_multiple_of(LANES)
            && d.checked_rem(group) == Some(0);
        if !fits || !available() {
            return None;
        }
        (self.n, self.d, self.group) = (0, d, group);
        self.vbmi = std::arch::is_x86_feature_detected!("avx512vbmi");
        self.values.resize(ROOM * d, 0);
        self.scales.resize(d / group * 2 * ROOM, 0.0);
        Some(ChunkPairs(self))
    }

    /// A lone row's chunk: `out` (`[heads, d]`) gains the values of `blocks` (each with its
    /// positions, in order) with the row's weights (`scores`: `(scores, len, at)`, head
    /// `h`'s from `h * len + at`), each pair converted in registers: the bits of pushing the
    /// blocks and [`ChunkPairs::add_row`]. `false` (nothing added) where the shapes do not
    /// fit the kernel or the CPU lacks it ([`converts_fast`]).
    pub fn add_lone(
        &mut self,
        blocks: &[(ValueBlock, usize)],
        (d, group): (usize, usize),
        row: (&[f32], usize, usize),
        heads: usize,
        out: &mut [f32],
    ) -> bool {
        let last = blocks.len().saturating_sub(1);
        let fits = blocks
            .iter()
            .enumerate()
            .all(|(j, &(v, n))| v.group == group && v.q.len() == n * d && (n.is_multiple_of(2) || j == last));
        let scales = blocks.iter().map(|&(v, n)| (v.scales, n));
        if !fits || !self.lone_weights(scales, (d, group), row, heads, out.len()) {
            return false;
        }
        // SAFETY: AVX-512F/BW/BF16/VBMI were detected (`converts_fast`), the words written
        // (`lone_weights`); every block `[n, d]` with `n` even but the last's (checked), `d`
        // a multiple of 64, groups of a multiple of 16, 1 to 4 heads.
        unsafe { by_count!(heads, lone::<[4, 3, 2]>(blocks, (d, group), &self.words, out)) };
        true
    }

    /// [`Self::add_lone`] over 4-bit values ([`NibbleBlock`]s, groups of 32), each pair of
    /// positions unpacked in registers: the bits of unpacking them into 8-bit blocks first.
    pub fn add_lone_nibbles(
        &mut self,
        blocks: &[(NibbleBlock, usize)],
        d: usize,
        row: (&[f32], usize, usize),
        heads: usize,
        out: &mut [f32],
    ) -> bool {
        let last = blocks.len().saturating_sub(1);
        let fits = blocks
            .iter()
            .enumerate()
            .all(|(j, &(v, n))| 2 * v.q.len() == n * d && (n.is_multiple_of(2) || j == last));
        let scales = blocks.iter().map(|&(v, n)| (v.scales, n));
        if !fits || !self.lone_weights(scales, (d, NIBBLE_GROUP), row, heads, out.len()) {
            return false;
        }
        // SAFETY: as in `add_lone`, every block `n * d / 2` bytes (checked).
        unsafe { by_count!(heads, lone_nibbles::<[4, 3, 2]>(blocks, d, &self.words, out)) };
        true
    }

    /// A lone row's weights for a chunk whose blocks have the scales `scales` (as stored,
    /// with their positions): checks the shapes the lone kernels take, then writes the
    /// weights as bf16 pairs into `words`. `false` (nothing written) where they do not fit.
    fn lone_weights<'v>(
        &mut self,
        scales: impl Iterator<Item = (&'v [u16], usize)> + Clone,
        (d, group): (usize, usize),
        (sc, len, at): (&[f32], usize, usize),
        heads: usize,
        out_len: usize,
    ) -> bool {
        let m: usize = scales.clone().map(|(_, n)| n).sum();
        let groups = d.checked_div(group).unwrap_or(0);
        let fits = converts_fast()
            && m <= 2 * ROOM
            && d.is_multiple_of(4 * LANES)
            && group.is_multiple_of(LANES)
            && groups > 0
            && d.is_multiple_of(group)
            && (1..=4).contains(&heads)
            && out_len == heads * d
            && sc.len() >= (heads - 1) * len + at + m
            && scales.clone().all(|(s, n)| s.len() >= n * groups);
        if !fits {
            return false;
        }
        self.scales.resize(groups * 2 * ROOM, 0.0);
        // Each block's `stored` holds its `n` positions' scales (checked above), `m <= 2 * ROOM`.
        widen_chunk(scales, groups, &mut self.flat, (&mut self.scales, 0));
        self.words.resize(groups * heads * ROOM, 0);
        // SAFETY: AVX-512F/BW/BF16/VBMI were detected (`converts_fast`); the scores checked
        // above, the scales `[groups, 2 * ROOM]` and the words `[groups, heads, ROOM]` with `m
        // <= 2 * ROOM`.
        unsafe { by_count!(heads, weights::<[4, 3, 2]>(&sc[at..], (m, len), &self.scales, &mut self.words)) };
        true
    }
}

/// A chunk being converted ([`Pairs::start`]): its blocks pushed in order, then its rows
/// added.
#[derive(Debug)]
pub struct ChunkPairs<'a>(&'a mut Pairs);

impl ChunkPairs<'_> {
    /// Appends the block `v` (`[n, d]`); a block of odd `n` only last.
    pub fn push(&mut self, v: ValueBlock, n: usize) {
        let p = &mut *self.0;
        let (d, groups) = (p.d, p.d / p.group);
        let ok = v.group == p.group
            && v.q.len() == n * d
            && v.scales.len() >= n * groups
            && p.n.is_multiple_of(2)
            && p.n + n <= 2 * ROOM;
        assert!(ok, "attention_q8: a value block that does not fit the chunk's pairs");
        widen_chunk(
            std::iter::once((v.scales, n)),
            groups,
            &mut p.flat,
            (&mut p.scales, p.n),
        );
        let (q, block) = (&v.q[..n * d], &mut p.values[p.n / 2 * d..]);
        // SAFETY: AVX-512F/BW/BF16 were detected by `start`, VBMI where used; `v.q` holds `n *
        // d` bytes and the pairs from `p.n / 2` `ceil(n / 2) * d` words (`p.n + n <= 2 *
        // ROOM`), `d` a multiple of 64.
        unsafe {
            match p.vbmi {
                true => bf16::convert_vbmi(q, n, d, block),
                false => bf16::convert(q, n, d, block),
            }
        }
        p.n += n;
    }

    /// `out` (`[heads, d]`) gains the chunk's first `m` positions with the row's weights
    /// (`scores`: `(scores, len, at)`, head `h`'s `m` from `h * len + at`): one sum per head
    /// and dimension from zero over them in pair order, added at the end.
    pub fn add_row(&mut self, (sc, len, at): (&[f32], usize, usize), m: usize, heads: usize, out: &mut [f32]) {
        let p = &mut *self.0;
        let (d, groups) = (p.d, p.d / p.group);
        let ok =
            m <= p.n && out.len() == heads * d && (1..=4).contains(&heads) && sc.len() >= (heads - 1) * len + at + m;
        assert!(ok, "attention_q8: a row's weights disagree with the chunk's pairs");
        p.words.resize(groups * heads * ROOM, 0);
        // SAFETY: AVX-512F/BW/BF16 were detected by `start`; the scores checked above, the
        // scales `[groups, 2 * ROOM]` and the words `[groups, heads, ROOM]` with `m <= 2 *
        // ROOM`.
        unsafe { by_count!(heads, weights::<[4, 3, 2]>(&sc[at..], (m, len), &p.scales, &mut p.words)) };
        // SAFETY: as above; the pairs hold `ceil(m / 2)` pairs of `d` dimensions (a
        // multiple of 64), groups of a multiple of 16 dimensions, 1 to 4 heads.
        unsafe { by_count!(heads, add::<[4, 3, 2]>(&p.values, (m, d, p.group), &p.words, out)) }
    }
}

/// Each head's and group's weights of a row: `bf16_weight(score * scale)` for the first
/// `m` positions (zero past them, to the 16 positions' end) as pairs, `[groups, heads,
/// ROOM]`.
///
/// # Safety
/// AVX-512F/BW/BF16; `sc` holds `H` heads' `m` scores `len` apart, `scales` `[groups, 2 *
/// ROOM]`, `words` `[groups, H, ROOM]`, `m <= 2 * ROOM`.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[allow(clippy::needless_range_loop)] // `h` indexes several arrays in step
unsafe fn weights<const H: usize>(sc: &[f32], (m, len): (usize, usize), scales: &[f32], words: &mut [u32]) {
    let tiny = _mm512_set1_ps(f32::from_bits(27 << 23));
    // Sixteen positions a step, every head and group: each score and scale loaded once.
    for k in (0..m).step_by(LANES) {
        let mask: __mmask16 = if m - k >= LANES { !0 } else { (1u16 << (m - k)) - 1 };
        let mut e = [_mm512_setzero_ps(); H];
        for h in 0..H {
            // SAFETY: the mask loads the `m` scores of head `h`.
            e[h] = unsafe { _mm512_maskz_loadu_ps(mask, sc.as_ptr().add(h * len + k)) };
        }
        for (g, column) in scales.chunks_exact(2 * ROOM).enumerate() {
            // SAFETY: the mask loads the `m` scales of group `g`.
            let s = unsafe { _mm512_maskz_loadu_ps(mask, column.as_ptr().add(k)) };
            for h in 0..H {
                let x = _mm512_mul_ps(e[h], s);
                // Magnitudes below 2^-100 to zero; NaN (unordered) kept.
                let keep = _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(_mm512_abs_ps(x), tiny);
                let packed = _mm512_cvtneps_pbh(_mm512_maskz_mov_ps(keep, x));
                let dst = &mut words[(g * H + h) * ROOM..][..ROOM];
                // SAFETY: eight words from `k / 2 < ROOM` (`k` a multiple of 16).
                unsafe {
                    _mm256_storeu_si256(
                        dst.as_mut_ptr().add(k / 2).cast(),
                        std::mem::transmute::<__m256bh, __m256i>(packed),
                    )
                };
            }
        }
    }
}

/// Each of `R` registers' group's words for the `H` heads, the registers 16 dimensions
/// apart from dimension `c` (words `[d / group, H, ROOM]`). This and the next two are
/// macros: a function's body would not share the kernels' target features.
macro_rules! group_words {
    ($words:expr, ($c:expr, $group:expr), $h:expr, $r:expr) => {{
        let mut w = [$words.as_ptr(); $r];
        for (r, w) in w.iter_mut().enumerate() {
            // SAFETY: `(c + 16r) / group < d / group`: a group's words.
            *w = unsafe { $words.as_ptr().add(($c + r * LANES) / $group * $h * ROOM) };
        }
        w
    }};
}

/// One pair of positions (`u`: `R` registers of bf16 pairs, 16 dimensions each) added to
/// every head's sums with its weights (word `pair` of each head's and register's words):
/// one `vdpbf16ps` per head and register. Used inside `unsafe`, with `pair < ROOM`.
macro_rules! add_pair {
    ($acc:expr, $u:expr, ($w:expr, $pair:expr), $h:expr, $r:expr) => {{
        for h in 0..$h {
            for r in 0..$r {
                let x = _mm512_set1_epi32(*$w[r].add(h * ROOM + $pair) as i32);
                let (u, x) = (
                    std::mem::transmute::<__m512i, __m512bh>($u[r]),
                    std::mem::transmute::<__m512i, __m512bh>(x),
                );
                $acc[h][r] = _mm512_dpbf16_ps($acc[h][r], u, x);
            }
        }
    }};
}

/// `out` (`[H, d]`) gains every head's `R` sums, 16 dimensions each from dimension `c`.
macro_rules! add_sums {
    ($out:expr, $acc:expr, ($d:expr, $c:expr), $h:expr, $r:expr) => {{
        for h in 0..$h {
            for r in 0..$r {
                let o = &mut $out[h * $d + $c + r * LANES..][..LANES];
                // SAFETY: `o` holds 16 f32.
                unsafe { _mm512_storeu_ps(o.as_mut_ptr(), _mm512_add_ps(_mm512_loadu_ps(o.as_ptr()), $acc[h][r])) };
            }
        }
    }};
}

/// A lone row's sums for `H` heads over a chunk's `blocks` (each with its positions), 64
/// dimensions from `c` at a time: each pair of positions (`p`, its odd one present where
/// `odd`) of a block (at `q`) converted in registers by `$convert` into four registers of
/// bf16 pairs, then [`add`]'s `vdpbf16ps` per head and 16 dimensions from zero over every
/// pair of the chunk in order, added to `out` at the end. The blocks `BLOCKS_AHEAD` on are
/// asked for while one is used. `$convert` runs inside `unsafe`, with `2p < n` and `c + 64
/// <= d`.
macro_rules! lone_sums {
    ($blocks:expr, ($d:expr, $group:expr), $words:expr, $out:expr, $h:expr,
     |$q:ident, $c:ident, $p:ident, $odd:ident| $convert:expr) => {{
        const R: usize = 4;
        const BLOCKS_AHEAD: usize = 2;
        for $c in (0..$d).step_by(R * LANES) {
            let w = group_words!($words, ($c, $group), $h, R);
            let mut acc = [[_mm512_setzero_ps(); R]; $h];
            let mut pair = 0;
            for (j, &(v, n)) in $blocks.iter().enumerate() {
                if $c == 0 {
                    let first = if j == 0 { 1 } else { j + BLOCKS_AHEAD };
                    for (ahead, _) in $blocks.iter().take(j + BLOCKS_AHEAD + 1).skip(first) {
                        super::super::widen::prefetch(ahead.q);
                    }
                }
                let $q = v.q.as_ptr();
                for $p in 0..n.div_ceil(2) {
                    let $odd = 2 * $p + 1 < n;
                    // SAFETY: `2p < n` (the odd position only where `odd`) and `c + 64 <= d`:
                    // what `$convert` reads lies within the block; `pair < ceil(m / 2) <=
                    // ROOM`: within each head's words.
                    unsafe {
                        let u = $convert;
                        add_pair!(acc, u, (w, pair), $h, R);
                    }
                    pair += 1;
                }
            }
            add_sums!($out, acc, ($d, $c), $h, R);
        }
    }};
}

/// A lone row's sums over 8-bit value blocks ([`lone_sums!`]), each pair's 64 bytes of
/// each position converted by `bf16_pairs!` ([`super::bf16`]).
///
/// # Safety
/// AVX-512F/BW/BF16/VBMI; each block `[n, d]` bytes, every `n` even but the last's, their
/// sum `m <= 2 * ROOM`; `d` a multiple of 64, `group` of 16; `words` `[d / group, H, ROOM]`;
/// `out` `H * d` floats.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16,avx512vbmi")]
#[allow(clippy::needless_range_loop)] // `h` and `r` index several arrays in step
unsafe fn lone<const H: usize>(
    blocks: &[(ValueBlock, usize)],
    (d, group): (usize, usize),
    words: &[u32],
    out: &mut [f32],
) {
    let k = bf16_constants!();
    lone_sums!(blocks, (d, group), words, out, H, |q, c, p, odd| {
        let even = _mm512_loadu_si512(q.add(2 * p * d + c).cast());
        let odd = match odd {
            true => _mm512_loadu_si512(q.add((2 * p + 1) * d + c).cast()),
            false => _mm512_setzero_si512(),
        };
        bf16_pairs!(k, even, odd)
    });
}

/// [`lone`] over 4-bit values: each pair of positions' 64 dimensions (two groups, 32 bytes
/// each) converted into bf16 pairs by `nibble_pairs!` (the words `bf16_pairs!` makes of
/// the values unpacked), then the same sums.
///
/// # Safety
/// AVX-512F/BW/BF16/VBMI; every block `n * d / 2` bytes with `n` even but the last's, `d`
/// a multiple of 64, `words` `[d / 32, H, ROOM]` with the blocks' positions `<= 2 * ROOM`,
/// `out` `H * d` floats.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16,avx512vbmi")]
#[allow(clippy::needless_range_loop)] // `h` and `r` index several arrays in step
unsafe fn lone_nibbles<const H: usize>(blocks: &[(NibbleBlock, usize)], d: usize, words: &[u32], out: &mut [f32]) {
    let k = nibble_constants!();
    // A missing odd position: both nibbles 8, the value 0.
    let missing = _mm256_set1_epi8(0x88u8 as i8);
    lone_sums!(blocks, (d, NIBBLE_GROUP), words, out, H, |q, c, p, odd| {
        let even = _mm256_loadu_si256(q.add((2 * p * d + c) / 2).cast());
        let odd = match odd {
            true => _mm256_loadu_si256(q.add(((2 * p + 1) * d + c) / 2).cast()),
            false => missing,
        };
        nibble_pairs!(k, even, odd)
    });
}

/// [`ChunkPairs::add_row`]'s sums for `H` heads, 64 dimensions at a time: one `vdpbf16ps` per
/// head, pair of positions and 16 dimensions, the weights broadcast from `words`.
///
/// # Safety
/// AVX-512F/BW/BF16; `values` `ceil(m / 2)` pairs of `d` dimensions (a multiple of 64),
/// `words` `[d / group, H, ROOM]` with `m <= 2 * ROOM`, `group` a multiple of 16, `out` `H *
/// d` floats.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[allow(clippy::needless_range_loop)] // `h` and `r` index several arrays in step
unsafe fn add<const H: usize>(values: &[u32], (m, d, group): (usize, usize, usize), words: &[u32], out: &mut [f32]) {
    const R: usize = 4;
    for c in (0..d).step_by(R * LANES) {
        let w = group_words!(words, (c, group), H, R);
        let mut acc = [[_mm512_setzero_ps(); R]; H];
        for p in 0..m.div_ceil(2) {
            // SAFETY: `p < ceil(m / 2) <= ROOM` and `c + 64 <= d`: within the pairs and words.
            unsafe {
                let mut u = [_mm512_setzero_si512(); R];
                for r in 0..R {
                    u[r] = _mm512_loadu_si512(values.as_ptr().add(p * d + c + r * LANES).cast());
                }
                add_pair!(acc, u, (w, p), H, R);
            }
        }
        add_sums!(out, acc, (d, c), H, R);
    }
}
