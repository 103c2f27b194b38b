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
        .collect::<Result<_, _>>()
        .map_err(|e| crate::common::renamed(e, "dtypes"))?;
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
    plain(&a, device, &dtypes)
}

/// `llama32 bench`: load, prefill, decode and chat TTFT per weight format.
fn plain(a: &BenchArgs, device: llama32::DeviceKind, dtypes: &[ComputeDType]) -> anyhow::Result<ExitCode> {
    let config = BenchConfig {
        pp: a.pp,
        tg: a.tg,
        chat_tokens: 64,
        reps: a.reps,
        kv_dtype: kv_dtype(a)?,
    };
    let mut out = io::stdout().lock();
    if !a.json {
        writeln!(
            out,
            "model: {}  threads: {}  reps: {}",
            a.model.display(),
            rayon::current_num_threads(),
            a.reps
        )?;
        writeln!(out, "{}", table_header(&config))?;
    }
    let mut all = Vec::new();
    for &dtype in dtypes {
        reset_peak_rss();
        let label = format!("loading and measuring {} as {dtype}", a.model.display());
        let r = crate::common::with_spinner(&label, || llama32::bench::run(&a.model, device, dtype, &config))?;
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
    let title = format!(
        "model: {}  threads: {}",
        a.model.display(),
        rayon::current_num_threads()
    );
    let table = Table {
        title,
        header: llama32::bench::BatchedRow::header(),
        key: "batched",
    };
    per_engine(a, dtypes, table, |dtype| {
        let options = llama32::LoadOptions {
            device,
            dtype: Some(dtype),
            parallel: sizes.iter().copied().max(),
            kv_dtype: kv_dtype(a)?,
            ..Default::default()
        };
        let engine = crate::common::with_spinner(&format!("loading {} as {dtype}", a.model.display()), || {
            llama32::Engine::load(&a.model, &options)
        })?;
        let rows = llama32::bench::batched(&engine, a.pp, a.tg, sizes)?;
        Ok(rows
            .into_iter()
            .map(|r| (r.row(&dtype.to_string()), serde_json::json!(r)))
            .collect())
    })
}

/// `llama32 bench --spec`: one engine per dtype (with the draft model when given).
fn speculation(
    a: &BenchArgs,
    device: llama32::DeviceKind,
    dtypes: &[ComputeDType],
    spec: llama32::engine::Speculation,
) -> anyhow::Result<ExitCode> {
    let title = format!("model: {}  spec: {spec:?}  reps: {}", a.model.display(), a.reps);
    let table = Table {
        title,
        header: llama32::bench::SpecRow::header(),
        key: "speculation",
    };
    per_engine(a, dtypes, table, |dtype| {
        let options = llama32::LoadOptions {
            device,
            dtype: Some(dtype),
            draft_model: a.draft_model.clone(),
            draft_dtype: a.draft_dtype.as_deref().map(str::parse).transpose()?,
            kv_dtype: kv_dtype(a)?,
            ..Default::default()
        };
        let engine = crate::common::with_spinner(&format!("loading {} as {dtype}", a.model.display()), || {
            llama32::Engine::load(&a.model, &options)
        })?;
        let rows = llama32::bench::speculation(&engine, spec, a.tg, a.reps)?;
        Ok(rows
            .into_iter()
            .map(|r| (r.row(&dtype.to_string()), serde_json::json!(r)))
            .collect())
    })
}

/// How a per-engine measurement prints: its title line and table header, and the key its
/// rows go under in `--json`.
struct Table {
    title: String,
    header: &'static str,
    key: &'static str,
}

/// Loads one engine per dtype and prints the rows `measure` gives for each (as table lines
/// or, with `--json`, one object listing them all).
fn per_engine(
    a: &BenchArgs,
    dtypes: &[ComputeDType],
    table: Table,
    measure: impl Fn(ComputeDType) -> anyhow::Result<Vec<(String, serde_json::Value)>>,
) -> anyhow::Result<ExitCode> {
    let mut out = io::stdout().lock();
    if !a.json {
        writeln!(out, "{}\n{}", table.title, table.header)?;
    }
    let mut all = Vec::new();
    for &dtype in dtypes {
        for (line, row) in measure(dtype)? {
            match a.json {
                true => all.push(serde_json::json!({"dtype": dtype.to_string(), "row": row})),
                false => writeln!(out, "{line}")?,
            }
        }
    }
    if a.json {
        writeln!(out, "{}", serde_json::json!({"model": a.model, (table.key): all}))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `--kv-dtype` as a library value.
fn kv_dtype(a: &BenchArgs) -> llama32::Result<Option<llama32::KvDType>> {
    a.kv_dtype.as_deref().map(str::parse).transpose()
}
