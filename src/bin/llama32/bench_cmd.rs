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
    if let Some(list) = &a.batched {
        let sizes: Vec<usize> = list
            .split(',')
            .map(|b| b.trim().parse::<usize>().ok().filter(|&b| b > 0))
            .collect::<Option<_>>()
            .ok_or_else(|| llama32::Error::InvalidParameter {
                name: "batched",
                reason: format!("`{list}` is not a list of sizes such as 1,2,4,8"),
            })?;
        return batched(&a, device, &dtypes, &sizes);
    }
    if let Some(kind) = &a.spec {
        let spec =
            crate::common::speculation(kind, a.spec_n, a.spec_k)?.ok_or_else(|| llama32::Error::InvalidParameter {
                name: "spec",
                reason: "give ngram or draft".into(),
            })?;
        return speculation(&a, device, &dtypes, spec);
    }
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

/// `llama32 bench --batched`: one engine per dtype, every batch size on it.
fn batched(
    a: &BenchArgs,
    device: llama32::DeviceKind,
    dtypes: &[ComputeDType],
    sizes: &[usize],
) -> anyhow::Result<ExitCode> {
    let mut out = io::stdout().lock();
    if !a.json {
        writeln!(
            out,
            "model: {}  threads: {}",
            a.model.display(),
            std::thread::available_parallelism()?
        )?;
        writeln!(out, "{}", llama32::bench::BatchedRow::header())?;
    }
    let mut all = Vec::new();
    for &dtype in dtypes {
        let options = llama32::LoadOptions {
            device,
            dtype: Some(dtype),
            parallel: sizes.iter().copied().max(),
            ..Default::default()
        };
        let engine = llama32::Engine::load(&a.model, &options)?;
        for row in llama32::bench::batched(&engine, a.pp, a.tg, sizes)? {
            match a.json {
                true => all.push(serde_json::json!({"dtype": dtype.to_string(), "row": row})),
                false => writeln!(out, "{}", row.row(&dtype.to_string()))?,
            }
        }
    }
    if a.json {
        writeln!(out, "{}", serde_json::json!({"model": a.model, "batched": all}))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `llama32 bench --spec`: one engine per dtype (with the draft model when given).
fn speculation(
    a: &BenchArgs,
    device: llama32::DeviceKind,
    dtypes: &[ComputeDType],
    spec: llama32::engine::Speculation,
) -> anyhow::Result<ExitCode> {
    let mut out = io::stdout().lock();
    if !a.json {
        writeln!(out, "model: {}  spec: {spec:?}  reps: {}", a.model.display(), a.reps)?;
        writeln!(out, "{}", llama32::bench::SpecRow::header())?;
    }
    let mut all = Vec::new();
    for &dtype in dtypes {
        let options = llama32::LoadOptions {
            device,
            dtype: Some(dtype),
            draft_model: a.draft_model.clone(),
            draft_dtype: a.draft_dtype.as_deref().map(str::parse).transpose()?,
            ..Default::default()
        };
        let engine = llama32::Engine::load(&a.model, &options)?;
        for row in llama32::bench::speculation(&engine, spec, a.tg, a.reps)? {
            match a.json {
                true => all.push(serde_json::json!({"dtype": dtype.to_string(), "row": row})),
                false => writeln!(out, "{}", row.row(&dtype.to_string()))?,
            }
        }
    }
    if a.json {
        writeln!(out, "{}", serde_json::json!({"model": a.model, "speculation": all}))?;
    }
    Ok(ExitCode::SUCCESS)
}
