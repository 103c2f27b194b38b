//! Matmul kernels alone, per packed format and Llama-3.2-1B layer shape (`cargo bench
//! --bench kernels`): GB/s of weights streamed for one token (decode), and int8
//! multiply-adds per second over 64 and 512 tokens (prefill; 2 ops each in GOPS).

use std::time::Instant;

use llama32::model::quant::{Isa, PackedFormat, PackedWeight};

fn main() {
    let shapes = [
        ("tiny", 64, 2048),
        ("qkv", 3072, 2048),
        ("gate+up", 16384, 2048),
        ("down", 2048, 8192),
        ("lm_head", 128256, 2048),
    ];
    println!("| format | isa | shape | tokens | ms | GB/s | GOPS |");
    println!("|---|---|---|---|---|---|---|");
    for format in [PackedFormat::Q8_0, PackedFormat::Q4K] {
        for (name, rows, cols) in shapes {
            let w: Vec<f32> = (0..rows * cols)
                .map(|i| ((i * 2654435761) % 1000) as f32 / 1000.0 - 0.5)
                .collect();
            let Some(p) = PackedWeight::pack(&w, rows, cols, format) else {
                continue;
            };
            drop(w);
            for isa in Isa::available().into_iter().take(2) {
                for m in [1, 64, 512] {
                    if m == 512 && rows > 16384 {
                        continue;
                    }
                    let x: Vec<f32> = (0..m * cols).map(|i| (i % 17) as f32 / 17.0 - 0.5).collect();
                    let reps = if m == 1 { 200 } else { 3 };
                    p.matmul_with(&x, m, isa).unwrap();
                    let start = Instant::now();
                    for _ in 0..reps {
                        std::hint::black_box(p.matmul_with(&x, m, isa).unwrap());
                    }
                    let s = start.elapsed().as_secs_f64() / reps as f64;
                    let gbs = p.bytes() as f64 / s / 1e9;
                    let gops = 2.0 * (rows * cols * m) as f64 / s / 1e9;
                    println!(
                        "| {format:?} | {isa:?} | {name} {rows}x{cols} | {m} | {:.2} | {gbs:.1} | {gops:.0} |",
                        s * 1e3
                    );
                }
            }
        }
    }
}
