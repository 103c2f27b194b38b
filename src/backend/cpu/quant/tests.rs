use super::*;

/// Deterministic pseudo-random values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 23) as f32) - 1.0
        })
        .collect()
}

fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

const FORMATS: [PackedFormat; 2] = [PackedFormat::Q8_0, PackedFormat::Q4K];

#[test]
fn every_kernel_matches_the_portable_one_and_the_f32_twin() {
    // Which kernel families this run covers (the others cannot run on this CPU).
    eprintln!("kernels compared with the portable reference: {:?}", Isa::available());
    for format in FORMATS {
        for (rows, cols) in [(1, 32), (16, 64), (37, 96), (9, 384), (64, 256), (20, 768), (33, 1024)] {
            let w = values(rows * cols, (rows * cols) as u64);
            let p = PackedWeight::pack(&w, rows, cols, format).unwrap();
            assert_eq!(p.dims(), (rows, cols));
            for m in [1, 2, 3, 4, 5, 8, 9, 13, 16, 17, 25, 33] {
                let x = values(m * cols, m as u64 + 7);
                let portable = p.matmul_with(&x, m, Isa::Portable, &mut Spare::default()).unwrap();
                assert_eq!(portable.len(), m * rows);
                for isa in Isa::available() {
                    let fast = p.matmul_with(&x, m, isa, &mut Spare::default()).unwrap();
                    let err = rel_err(&fast, &portable);
                    assert!(err < 1e-5, "{format:?} {isa:?} {rows}x{cols} m={m}: {err}");
                }
                // Against dequantized weights with f32 activations: only the 8-bit
                // activation rounding differs.
                let err = rel_err(&portable, &p.matmul_reference(&x, m));
                assert!(err < 0.02, "{format:?} {rows}x{cols} m={m}: {err}");
            }
        }
    }
}

#[test]
fn dequantized_weights_stay_close_to_the_originals() {
    let (rows, cols) = (32, 512);
    let w = values(rows * cols, 3);
    for (format, tol) in [(PackedFormat::Q8_0, 0.01), (PackedFormat::Q4K, 0.08)] {
        let p = PackedWeight::pack(&w, rows, cols, format).unwrap();
        let (mut err, mut norm) = (0f64, 0f64);
        for r in 0..rows {
            for (a, b) in p.row(r).iter().zip(&w[r * cols..(r + 1) * cols]) {
                err += ((a - b) as f64).powi(2);
                norm += (*b as f64).powi(2);
            }
        }
        let rel = (err / norm).sqrt();
        assert!(rel < tol, "{format:?}: relative RMS error {rel}");
    }
}

#[test]
fn q8_0_weights_are_within_half_a_step() {
    let w = values(16 * 64, 5);
    let p = PackedWeight::pack(&w, 16, 64, PackedFormat::Q8_0).unwrap();
    for r in 0..16 {
        let row = &w[r * 64..(r + 1) * 64];
        for (b, chunk) in row.chunks(32).enumerate() {
            let step = chunk.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
            for (k, v) in chunk.iter().enumerate() {
                let got = p.row(r)[b * 32 + k];
                assert!(
                    (got - v).abs() <= step * 0.51 + 1e-3 * step,
                    "{r} {b} {k}: {got} vs {v}"
                );
            }
        }
    }
}

#[test]
fn constant_and_zero_rows_are_exact_enough() {
    let cols = 256;
    let mut w = vec![0f32; 3 * cols];
    w[cols..2 * cols].fill(0.5);
    w[2 * cols..].fill(-0.25);
    for format in FORMATS {
        let p = PackedWeight::pack(&w, 3, cols, format).unwrap();
        for (r, want) in [(0, 0.0), (1, 0.5), (2, -0.25)] {
            for v in p.row(r) {
                assert!((v - want).abs() < 2e-3, "{format:?} row {r}: {v}");
            }
        }
    }
}

#[test]
fn rows_that_are_not_whole_blocks_are_refused() {
    assert!(PackedWeight::pack(&[0.0; 40], 1, 40, PackedFormat::Q8_0).is_none());
    assert!(PackedWeight::pack(&[0.0; 64], 1, 32, PackedFormat::Q4K).is_none());
}

#[test]
fn q4k_super_blocks_follow_the_row_length() {
    assert_eq!(q4::sub_blocks(4096), 8);
    assert_eq!(q4::sub_blocks(64), 2);
    assert_eq!(q4::sub_blocks(96), 1);
    assert_eq!(q4::sub_blocks(384), 4);
}

/// `w: [rows, cols]` quantized by candle (llama.cpp's formats): its stored block bytes and
/// its dequantized values.
pub(crate) fn ggml_round_trip(
    w: &[f32],
    rows: usize,
    cols: usize,
    dtype: candle_core::quantized::GgmlDType,
) -> (Vec<u8>, Vec<f32>) {
    use candle_core::{quantized::QTensor, Device, Tensor};
    let t = Tensor::from_slice(w, (rows, cols), &Device::Cpu).unwrap();
    let q = QTensor::quantize(&t, dtype).unwrap();
    let values = q
        .dequantize(&Device::Cpu)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    (q.data().unwrap().to_vec(), values)
}

/// Relative RMS error of candle's (llama.cpp's) Q4_K / Q8_0 on the same weights.
fn ggml_error(w: &[f32], rows: usize, cols: usize, dtype: candle_core::quantized::GgmlDType) -> f64 {
    rms_rel(&ggml_round_trip(w, rows, cols, dtype).1, w)
}

fn rms_rel(a: &[f32], b: &[f32]) -> f64 {
    let err: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let norm: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (err / norm).sqrt()
}

#[test]
fn at_least_as_faithful_as_the_ggml_formats() {
    use candle_core::quantized::GgmlDType;
    let (rows, cols) = (64, 1024);
    // Roughly Gaussian weights (sum of uniforms), like a trained layer's.
    let u = values(rows * cols * 4, 11);
    let w: Vec<f32> = u.chunks(4).map(|c| c.iter().sum::<f32>() * 0.02).collect();
    for (format, dtype) in [
        (PackedFormat::Q8_0, GgmlDType::Q8_0),
        (PackedFormat::Q4K, GgmlDType::Q4K),
    ] {
        let p = PackedWeight::pack(&w, rows, cols, format).unwrap();
        let ours: Vec<f32> = (0..rows).flat_map(|r| p.row(r)).collect();
        let (ours, theirs) = (rms_rel(&ours, &w), ggml_error(&w, rows, cols, dtype));
        println!("{format:?}: relative RMS error {ours:.5}, ggml {dtype:?} {theirs:.5}");
        assert!(ours <= theirs * 1.02, "{format:?}: {ours:.5} vs ggml {theirs:.5}");
    }
}

#[test]
fn fast_rounding_rounds_and_clamps() {
    for (x, want) in [
        (0.4, 0.0),
        (0.6, 1.0),
        (-0.6, -1.0),
        (2.5, 2.0),
        (3.5, 4.0),
        (126.7, 127.0),
        (1e9, 127.0),
        (-1e9, -127.0),
    ] {
        assert_eq!(round_clamped(x, -127.0, 127.0), want, "{x}");
    }
    assert!(round_clamped(f32::NAN, 0.0, 15.0).is_nan());
}

#[test]
fn packing_row_by_row_equals_packing_a_slice() {
    let (rows, cols) = (37, 256);
    let w = values(rows * cols, 9);
    for format in FORMATS {
        let a = PackedWeight::pack(&w, rows, cols, format).unwrap();
        let b = PackedWeight::pack_with(rows, cols, format, |first, dst| {
            for (i, v) in dst.iter_mut().enumerate() {
                *v = w[first * cols + i];
            }
        })
        .unwrap();
        assert_eq!(a.bytes(), b.bytes());
        assert!((0..rows).all(|r| a.row(r) == b.row(r)));
    }
}

#[test]
fn q4_k_blocks_keep_llama_cpp_numbers() {
    use candle_core::quantized::GgmlDType;
    // 37 rows (not whole groups), two super-blocks per row; scales above 31 exercise the
    // split 6-bit encoding of sub-blocks 4-7.
    let (rows, cols) = (37, 512);
    let w: Vec<f32> = values(rows * cols, 91)
        .iter()
        .enumerate()
        .map(|(i, v)| v * (1.0 + (i / 32 % 7) as f32))
        .collect();
    let (bytes, want) = ggml_round_trip(&w, rows, cols, GgmlDType::Q4K);
    let row_bytes = cols / 256 * 144;
    assert_eq!(bytes.len(), rows * row_bytes);
    let p = PackedWeight::pack_q4k_blocks(rows, cols, |first, dst| {
        dst.copy_from_slice(&bytes[first * row_bytes..first * row_bytes + dst.len()])
    })
    .unwrap();
    for r in 0..rows {
        assert_eq!(p.row(r), want[r * cols..(r + 1) * cols], "row {r}");
    }
    // The kernels agree with the dequantized weights as for any packed matrix.
    let x = values(5 * cols, 3);
    let err = rel_err(&p.matmul(&x, 5).unwrap(), &p.matmul_reference(&x, 5));
    assert!(err < 0.02, "{err}");
    assert!(PackedWeight::pack_q4k_blocks(rows, 320, |_, _| {}).is_none());
}

#[test]
fn fast_q8_0_packing_equals_the_reference() {
    let cols = 128;
    let mut w = values(GROUP * cols, 21);
    // Ties at the scale step (x.5 after scaling), a block of zeros, tiny and huge values,
    // NaN and infinities: every byte and scale must match the reference's.
    for (k, v) in w.iter_mut().take(32).enumerate() {
        *v = (k as f32 - 16.0) + 0.5;
    }
    w[32..64].iter_mut().for_each(|v| *v = 0.0);
    w[64..96]
        .iter_mut()
        .enumerate()
        .for_each(|(k, v)| *v = (k as f32) * 1e-30);
    w[100] = f32::NAN;
    w[140] = f32::INFINITY;
    w[170] = -1e30;
    let blocks = cols / 32;
    let (mut a, mut b) = (vec![Line([0; 64]); blocks * 8], vec![Line([0; 64]); blocks * 8]);
    let (mut sa, mut sb) = (vec![0u8; blocks * GROUP * 2], vec![0u8; blocks * GROUP * 2]);
    q8::pack_group(&w, cols, &mut a, &mut sa);
    q8::pack_group_reference(&w, cols, &mut b, &mut sb);
    assert_eq!(sa, sb);
    assert!(a.iter().zip(&b).all(|(x, y)| x.0 == y.0));
}

#[test]
fn fast_q4k_packing_equals_the_reference() {
    for cols in [256, 96, 128, 2048] {
        let mut w = values(GROUP * cols, 33);
        w[..32].iter_mut().for_each(|v| *v = 0.25); // a constant sub-block
        w[64..96].iter_mut().for_each(|v| *v = -v.abs() - 0.01); // negative only
        w[3 * cols..3 * cols + 32].iter_mut().for_each(|v| *v = 0.0);
        w[40] = f32::NAN;
        w[cols + 7] = 1e30;
        w[2 * cols..2 * cols + 32]
            .iter_mut()
            .enumerate()
            .for_each(|(k, v)| *v = k as f32 * 1e-30);
        let sub = q4::sub_blocks(cols);
        let lines = cols / 32 * 4;
        let meta = cols / 32 / sub * q4::meta_len(sub);
        let (mut a, mut b) = (vec![Line([0; 64]); lines], vec![Line([0; 64]); lines]);
        let (mut ma, mut mb) = (vec![0u8; meta], vec![0u8; meta]);
        q4::pack_group(&w, cols, &mut a, &mut ma);
        q4::pack_group_reference(&w, cols, &mut b, &mut mb);
        assert_eq!(ma, mb, "{cols} columns");
        assert!(a.iter().zip(&b).all(|(x, y)| x.0 == y.0), "{cols} columns");
    }
}

/// The AVX2 q4k kernels sum a block in 16-bit lanes: levels of 15 against activations at
/// full scale, of either sign, are their largest sums, and still agree with the portable
/// kernel.
#[test]
fn q4k_kernels_hold_the_largest_sums() {
    let (rows, cols) = (16, 256);
    // The first column of each sub-block low, the rest high: levels 0 and 15.
    let w: Vec<f32> = (0..rows * cols).map(|i| if i % 32 == 0 { 0.0 } else { 1.0 }).collect();
    let p = PackedWeight::pack(&w, rows, cols, PackedFormat::Q4K).unwrap();
    for sign in [1.0f32, -1.0] {
        for m in [1, 4] {
            let x = vec![sign; m * cols];
            let portable = p.matmul_with(&x, m, Isa::Portable, &mut Spare::default()).unwrap();
            let want = sign * (cols - cols / 32) as f32;
            assert!(
                portable.iter().all(|v| (v - want).abs() < 0.01 * want.abs()),
                "{portable:?}"
            );
            for isa in Isa::available() {
                let fast = p.matmul_with(&x, m, isa, &mut Spare::default()).unwrap();
                let err = rel_err(&fast, &portable);
                assert!(err < 1e-5, "{isa:?} m={m} sign {sign}: {err}");
            }
        }
    }
}
