//! `llama32 bench`: the library's llama-bench-style measurement, as a table or JSON.

use std::io::{self, Write};
use std::process::ExitCode;

use llama32::bench::{peak_rss_mib, reset_peak_rss, table_header, BenchConfig};
use llama32::ComputeDType;

use crate::args::BenchArgs;

/// Runs `llama32 bench`.
pub fn run(a: BenchArgs) -> anyhow::Result<ExitCode> {
    let device = a.device.parse()?;
    let dtypes: Vec<ComputeDType> = a
        .dtypes
        .split(',')
        .map(|d| d.trim().parse())
        .collect::<Result<_, _>>()?;
    let config = BenchConfig {
        pp: a.pp,
        tg: a.tg,
        chat_tokens: 64,
        reps: a.reps,
    };
    let mut out = io::stdout().lock();
    if !a.json {
        writeln!(
            out,
            "model: {}  threads: {}  reps: {}",
            a.model.display(),
            std::thread::available_parallelism()?,
            a.reps
        )?;
        writeln!(out, "{}", table_header(&config))?;
    }
    let mut all = Vec::new();
    for dtype in dtypes {
        reset_peak_rss();
        let r = llama32::bench::run(&a.model, device, dtype, &config)?;
        let peak = peak_rss_mib();
        if a.json {
            all.push(serde_json::json!({"result": r, "peak_rss_mib": peak}));
        } else {
            writeln!(out, "{}", r.table_row(peak))?;
        }
    }
    if a.json {
        writeln!(
            out,
            "{}",
            serde_json::json!({"model": a.model, "config": config, "results": all})
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
