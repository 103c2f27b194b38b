//! Matmul kernels alone, per packed format and Llama-3.2-1B layer shape (`cargo bench
//! --bench kernels`): GB/s of weights streamed for one token (decode), and int8
//! multiply-adds per second over 8 (a batched decode step), 64 and 512 tokens (prefill; 2 ops
//! each in GOPS). Arguments filter the rows: `cargo bench --bench kernels -- Q8_0 gate`.
//! `cargo bench --bench kernels -- stream` instead sets the one-token `lm_head` in each
//! format against a plain read of as many bytes, interleaved: the share of the machine's
//! read bandwidth that decoding reaches.

use std::time::Instant;

use llama32::backend::cpu::quant::{Isa, PackedFormat, PackedWeight};
use llama32::backend::cpu::spare::Spare;

fn main() {
    let shapes = [
        ("tiny", 64, 2048),
        ("qkv", 3072, 2048),
        ("gate+up", 16384, 2048),
        ("down", 2048, 8192),
        ("lm_head", 128256, 2048),
    ];
    let filters: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let wanted = |s: &str| filters.iter().all(|f| s.contains(f.as_str()));
    if let Some(peak) = vnni_peak() {
        println!("vpdpbusd peak on this machine: {peak:.0} GOPS (512-bit, every core, registers only)\n");
    }
    if filters.iter().any(|f| f == "stream") {
        stream_rounds();
        return;
    }
    println!("| format | isa | shape | tokens | ms | GB/s | GOPS |");
    println!("|---|---|---|---|---|---|---|");
    for format in [PackedFormat::Q8_0, PackedFormat::Q4K] {
        for (name, rows, cols) in shapes {
            if !wanted(&format!("{format:?} {name}")) {
                continue;
            }
            let w: Vec<f32> = (0..rows * cols)
                .map(|i| ((i * 2654435761) % 1000) as f32 / 1000.0 - 0.5)
                .collect();
            let Some(p) = PackedWeight::pack(&w, rows, cols, format) else {
                continue;
            };
            drop(w);
            for isa in Isa::available().into_iter().take(2) {
                for m in [1, 8, 64, 512] {
                    if m == 512 && rows > 16384 {
                        continue;
                    }
                    let x: Vec<f32> = (0..m * cols).map(|i| (i % 17) as f32 / 17.0 - 0.5).collect();
                    let reps = if m <= 8 { 100 } else { 3 };
                    // Outputs go back to a spare pool, as in the engine's batched steps (a
                    // fresh 32 MB output per call would time page faults, not kernels).
                    let mut spare = Spare::default();
                    let y = p.matmul_with(&x, m, isa, &mut spare).unwrap();
                    spare.give(y);
                    let start = Instant::now();
                    for _ in 0..reps {
                        let y = p.matmul_with(&x, m, isa, &mut spare).unwrap();
                        spare.give(std::hint::black_box(y));
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

/// `-- stream`: the one-token `lm_head` (the largest weight, far larger than any cache) in
/// each format against a plain read of as many bytes, interleaved round by round, because
/// the memory bandwidth of a shared machine moves from second to second.
fn stream_rounds() {
    let (rows, cols) = (128256, 2048);
    let w: Vec<f32> = (0..rows * cols)
        .map(|i| ((i * 2654435761) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    let packed: Vec<PackedWeight> = [PackedFormat::Q8_0, PackedFormat::Q4K]
        .into_iter()
        .filter_map(|f| PackedWeight::pack(&w, rows, cols, f))
        .collect();
    drop(w);
    let x: Vec<f32> = (0..cols).map(|i| (i % 17) as f32 / 17.0 - 0.5).collect();
    let mut spare = Spare::default();
    let bytes = huge_ones(packed.iter().map(|p| p.bytes()).max().unwrap_or(0));
    let (mut reads, mut figures) = (Vec::new(), vec![Vec::new(); packed.len()]);
    for _ in 0..15 {
        for (p, fig) in packed.iter().zip(figures.iter_mut()) {
            let start = Instant::now();
            std::hint::black_box(read_all(&bytes[..p.bytes()]));
            reads.push(p.bytes() as f64 / start.elapsed().as_secs_f64() / 1e9);
            let start = Instant::now();
            let y = p.matmul_with(&x, 1, Isa::detect(), &mut spare).unwrap();
            fig.push(p.bytes() as f64 / start.elapsed().as_secs_f64() / 1e9);
            spare.give(y);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let read = median(&mut reads);
    println!("one-token lm_head {rows}x{cols}, 15 interleaved rounds, median GB/s (share of a plain read)");
    println!("plain read: {read:.1}");
    for (p, fig) in packed.iter().zip(figures.iter_mut()) {
        let g = median(fig);
        println!("{:?}: {g:.1} ({:.0}%)", p.format(), 100.0 * g / read);
    }
}

/// `len` bytes of ones in an anonymous mapping advised into transparent huge pages before
/// they are written, as the packed weights are: the plain read the kernels are held to.
fn huge_ones(len: usize) -> memmap2::MmapMut {
    let mut map = memmap2::MmapMut::map_anon(len.max(1)).unwrap();
    #[cfg(target_os = "linux")]
    let _ = map.advise(memmap2::Advice::HugePage);
    map.fill(1);
    map
}

/// Every byte read once, the halves on every core (what a one-token matmul can at best do).
fn read_all(bytes: &[u8]) -> u64 {
    use rayon::prelude::*;
    bytes
        .par_chunks(1 << 20)
        .map(|c| {
            c.chunks_exact(64).fold(0u64, |s, l| {
                let w: [u64; 8] = std::array::from_fn(|i| u64::from_le_bytes(l[8 * i..8 * i + 8].try_into().unwrap()));
                s ^ w.iter().fold(0, |a, b| a ^ b)
            })
        })
        .reduce(|| 0, |a, b| a ^ b)
}

/// The machine's int8 multiply-add peak with AVX-512 VNNI: every core runs independent
/// `vpdpbusd` chains on registers (2 ops per multiply-add, 64 per instruction).
#[cfg(target_arch = "x86_64")]
fn vnni_peak() -> Option<f64> {
    if !(is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni")) {
        return None;
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let iters = 20_000_000u64;
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            // SAFETY: the CPU has AVX-512F and VNNI (checked above).
            s.spawn(|| std::hint::black_box(unsafe { dpbusd_chains(iters) }));
        }
    });
    Some(2.0 * 64.0 * 12.0 * (iters * threads as u64) as f64 / start.elapsed().as_secs_f64() / 1e9)
}

#[cfg(not(target_arch = "x86_64"))]
fn vnni_peak() -> Option<f64> {
    None
}

/// 12 independent `vpdpbusd` accumulators, `iters` rounds.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn dpbusd_chains(iters: u64) -> i32 {
    use std::arch::x86_64::*;
    let (a, b) = (_mm512_set1_epi8(3), _mm512_set1_epi8(5));
    let mut acc = [_mm512_setzero_si512(); 12];
    for _ in 0..iters {
        for r in acc.iter_mut() {
            *r = _mm512_dpbusd_epi32(*r, a, b);
        }
    }
    acc.iter().fold(0, |s, r| s ^ _mm512_reduce_add_epi32(*r))
}
