//! A tile's attention over a q8_0 pool: keys scored with integer dot products
//! ([`attention_q8`]), values added from their 8-bit form or converted once for the tile's
//! rows.

use super::super::attention_q8::{self, QuantQuery, ValueBlock};
use super::super::kv_store::Part;
use super::blocks::add_values;
use super::{softmax_rows, store_scores, visible, Block, Kernels, Tile, TileShape, LANES};

/// [`super::tile_body`] over a q8_0 pool: keys scored with integer dot products and values added
/// from their 8-bit form, both read in place ([`attention_q8`]). Inlined like
/// [`super::tile_body`], so that its softmax is compiled for the caller's vector unit.
#[inline(always)]
pub(super) fn tile_q8(t: &Tile, s: &TileShape, kernels: Kernels) -> Vec<f32> {
    let mut scores = score_q8_blocks(t, s);
    softmax_rows(t.rows, &mut scores);
    add_q8_value_blocks(t, s, kernels, &scores)
}

/// Every row's scaled scores `[group, len]` against a q8_0 pool's keys, in place.
#[inline(always)]
fn score_q8_blocks(t: &Tile, s: &TileShape) -> Vec<Vec<f32>> {
    let dots = attention_q8::kernel();
    let q8_group = t.pool.layout().q8_group().unwrap_or(s.d);
    let queries: Vec<QuantQuery> = (0..t.rows.len())
        .map(|ri| QuantQuery::new(&t.q[ri * t.heads * s.d + t.kv * s.width..][..s.width], q8_group))
        .collect();
    let mut scores: Vec<Vec<f32>> = t.rows.iter().map(|r| vec![0f32; s.group * r.len]).collect();
    let mut accs = vec![[0f32; LANES]; s.group];
    for (j, &block) in s.blocks.iter().enumerate() {
        if let Some(&next) = s.blocks.get(j + 1) {
            t.pool.prefetch_head_block((t.layer, Part::Keys), next, t.kv);
        }
        let Some(tile) = t.pool.q8_key_tile(t.layer, block, t.kv) else {
            continue;
        };
        for (ri, row) in t.rows.iter().enumerate() {
            let Some(m) = visible(row, j, s.bs) else { continue };
            for c in 0..m.div_ceil(LANES) {
                dots(&queries[ri], tile, c * LANES, &mut accs);
                let at = j * s.bs + c * LANES;
                store_scores(
                    &accs,
                    (&mut scores[ri], row.len),
                    at,
                    (m - c * LANES).min(LANES),
                    s.scale,
                );
            }
        }
    }
    scores
}

/// The rows' outputs `[rows, group * d]` from a q8_0 pool's values: several rows share one
/// conversion of each block, which gives the same bits as converting in registers per row
/// (see [`attention_q8`]) where [`batch_axpys`] adds in the same order.
#[inline(always)]
fn add_q8_value_blocks(t: &Tile, s: &TileShape, kernels: Kernels, scores: &[Vec<f32>]) -> Vec<f32> {
    let axpys = attention_q8::value_kernel();
    let mut out = vec![0f32; t.rows.len() * s.width];
    let mut scratch = vec![0f32; s.bs * s.d];
    let mut runs = (Vec::new(), Vec::new());
    let shared = t.rows.len() > 1 && (2..=4).contains(&s.group) && s.d.is_multiple_of(LANES);
    for (j, &block) in s.blocks.iter().enumerate() {
        if let Some(&next) = s.blocks.get(j + 1) {
            t.pool.prefetch_head_block((t.layer, Part::Values), next, t.kv);
        }
        let n = s.count(j);
        if shared {
            let values = t.pool.head_block((t.layer, Part::Values), block, t.kv, n, &mut scratch);
            add_values(t, s, j, (Block::F32(values), kernels), (scores, &mut runs), &mut out);
            continue;
        }
        let Some(vb) = t.pool.q8_value_block(t.layer, block, t.kv, n) else {
            continue;
        };
        for (ri, row) in t.rows.iter().enumerate() {
            let Some(m) = visible(row, j, s.bs) else { continue };
            let part = ValueBlock {
                q: &vb.q[..m * s.d],
                scales: &vb.scales[..m * s.d / vb.group],
                group: vb.group,
            };
            let orow = &mut out[ri * s.width..(ri + 1) * s.width];
            axpys((&scores[ri], row.len, j * s.bs), m, part, orow, &mut scratch);
        }
    }
    out
}
