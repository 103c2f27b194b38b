//! Row-wise operations of the forward pass on plain f32 slices: RMSNorm, RoPE, the SwiGLU
//! product and the residual sum, each a loop the compiler vectorises.

/// Each row of `width` values of `x` RMS-normalised and scaled by `w` (HF's
/// `LlamaRMSNorm` in f32), written into `out`'s buffer (its contents are replaced).
pub(crate) fn rms_norm_rows(x: &[f32], w: &[f32], eps: f32, mut out: Vec<f32>) -> Vec<f32> {
    let width = w.len().max(1);
    out.clear();
    for row in x.chunks(width) {
        let ms = row.iter().map(|v| v * v).sum::<f32>() / width as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        out.extend(row.iter().zip(w).map(|(v, w)| v * inv * w));
    }
    out
}

/// `x += y`, element-wise.
pub(crate) fn add_assign(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// RoPE on every head of `x` (HF's rotate-half convention) with one position's angles.
pub(crate) fn rotate(x: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32]) {
    let half = head_dim / 2;
    for head in x.chunks_mut(head_dim) {
        let (a, b) = head.split_at_mut(half);
        for i in 0..half {
            let (x1, x2) = (a[i], b[i]);
            a[i] = x1 * cos[i] - x2 * sin[i];
            b[i] = x2 * cos[i] + x1 * sin[i];
        }
    }
}

isa_dispatch! {
    /// `g = silu(g) * u` element-wise (the SwiGLU product of the batched CPU path), vectorised:
    /// the sigmoid comes from `e^-|g|` ([`super::attention::exp_neg`], within 2 ulp of `exp`), not
    /// from a libm call per value. Every ISA gives the same bits (fused multiply-adds only).
    pub(crate) fn silu_mul_rows(g: &mut [f32], u: &[f32]) => silu_body;
}

#[inline(always)]
fn silu_body(g: &mut [f32], u: &[f32]) {
    for (g, &u) in g.iter_mut().zip(u) {
        let e = super::attention::exp_neg(-g.abs());
        let r = 1.0 / (1.0 + e);
        let s = if *g >= 0.0 { r } else { e * r };
        *g = *g * s * u;
    }
}

#[cfg(test)]
mod silu_tests {
    use super::*;

    #[test]
    fn silu_mul_follows_the_exact_formula() {
        let g: Vec<f32> = (-2000..2000)
            .map(|i| i as f32 * 0.011)
            .chain([f32::NAN, 0.0, -0.0, 90.0, -90.0])
            .collect();
        let u: Vec<f32> = (0..g.len()).map(|i| 1.0 + (i % 7) as f32 * 0.25).collect();
        let mut got = g.clone();
        silu_mul_rows(&mut got, &u);
        let mut portable = g.clone();
        silu_body(&mut portable, &u);
        for i in 0..g.len() {
            let want = (g[i] as f64 / (1.0 + (-g[i] as f64).exp()) * u[i] as f64) as f32;
            let same = got[i].to_bits() == portable[i].to_bits() || (got[i].is_nan() && portable[i].is_nan());
            assert!(same, "ISA paths differ at {}", g[i]);
            if want.is_nan() {
                assert!(got[i].is_nan());
            } else {
                // Relative 4 ulp; below e^-87 (where `exp_neg` stops) absolutely tiny.
                let tol = 4.0 * f32::EPSILON * want.abs() + 1e-30;
                assert!((got[i] - want).abs() <= tol, "{}: {} vs {want}", g[i], got[i]);
            }
        }
    }
}

#[cfg(test)]
mod row_tests {
    use super::*;

    #[test]
    fn rms_norm_rows_follow_the_formula() {
        let x: Vec<f32> = (0..12).map(|i| i as f32 - 5.5).collect();
        let w = [0.5f32, 1.0, 2.0, -1.0];
        let got = rms_norm_rows(&x, &w, 1e-5, Vec::new());
        for (r, row) in x.chunks(4).enumerate() {
            let ms = row.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / 4.0;
            for i in 0..4 {
                let want = row[i] as f64 / (ms + 1e-5).sqrt() * w[i] as f64;
                assert!((got[r * 4 + i] as f64 - want).abs() < 1e-5, "{r} {i}");
            }
        }
    }
}
