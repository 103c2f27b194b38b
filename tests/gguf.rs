//! GGUF checkpoints: files written here from the fixtures the way llama.cpp's
//! `convert_hf_to_gguf.py` writes them (tensor names, interleaved rotary rows, `rope_freqs`,
//! the tokenizer as `tokenizer.ggml.*` arrays, the chat template), loaded back and compared
//! with the safetensors path; and malformed files that must give named errors.
//! (`scripts/gguf-check.sh` runs the same comparison on files made by llama.cpp's own
//! converter.)

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use common::{expected, fixture};
use llama32::{ComputeDType, Engine, Error, GenerateRequest, LlamaConfig, LoadOptions, SamplingParams};

/// Writes `fixture`'s checkpoint as a GGUF file with 2-D tensors in `matrices`.
fn write_gguf(name: &str, matrices: GgmlDType, out: &Path) {
    write_gguf_edited(name, matrices, out, |_| {})
}

/// [`write_gguf`] with the metadata changed by `edit` before writing.
fn write_gguf_edited(name: &str, matrices: GgmlDType, out: &Path, edit: impl Fn(&mut Vec<(String, Value)>)) {
    let dir = fixture(name);
    let cfg = LlamaConfig::from_file(&dir.join("config.json")).unwrap();
    let mut meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String("llama".into())),
        ("llama.block_count".into(), Value::U32(cfg.num_hidden_layers as u32)),
        (
            "llama.context_length".into(),
            Value::U32(cfg.max_position_embeddings as u32),
        ),
        ("llama.embedding_length".into(), Value::U32(cfg.hidden_size as u32)),
        (
            "llama.feed_forward_length".into(),
            Value::U32(cfg.intermediate_size as u32),
        ),
        (
            "llama.attention.head_count".into(),
            Value::U32(cfg.num_attention_heads as u32),
        ),
        (
            "llama.attention.head_count_kv".into(),
            Value::U32(cfg.num_key_value_heads as u32),
        ),
        ("llama.rope.freq_base".into(), Value::F32(cfg.rope_theta)),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            Value::F32(cfg.rms_norm_eps as f32),
        ),
        ("llama.rope.dimension_count".into(), Value::U32(cfg.head_dim as u32)),
        ("llama.vocab_size".into(), Value::U32(cfg.vocab_size as u32)),
    ];
    meta.extend(tokenizer_meta(&dir));
    edit(&mut meta);
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    let st = llama32::weights::Weights::open(&dir).unwrap();
    for (hf, shape) in llama32::model::expected_tensors(&cfg) {
        let t = st.get(&hf, &shape, DType::F32, &Device::Cpu).unwrap();
        let t = match (hf.contains("q_proj"), hf.contains("k_proj")) {
            (true, _) => interleave(&t, cfg.num_attention_heads),
            (_, true) => interleave(&t, cfg.num_key_value_heads),
            _ => t,
        };
        let dtype = if t.rank() == 2 { matrices } else { GgmlDType::F32 };
        tensors.push((gguf_name(&hf), QTensor::quantize(&t, dtype).unwrap()));
    }
    if let Some(s) = cfg.rope_scaling {
        let factors = llama3_factors(&cfg, s);
        let t = Tensor::new(factors.as_slice(), &Device::Cpu).unwrap();
        tensors.push((
            "rope_freqs.weight".into(),
            QTensor::quantize(&t, GgmlDType::F32).unwrap(),
        ));
    }
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = std::fs::File::create(out).unwrap();
    gguf_file::write(&mut file, &meta_refs, &tensor_refs).unwrap();
}

/// llama.cpp's tensor names.
fn gguf_name(hf: &str) -> String {
    let map = [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
    ];
    if let Some((_, g)) = map.iter().find(|(h, _)| *h == hf) {
        return g.to_string();
    }
    let rest = hf.strip_prefix("model.layers.").unwrap();
    let (layer, part) = rest.split_once('.').unwrap();
    let part = match part {
        "input_layernorm.weight" => "attn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        other => panic!("{other}"),
    };
    format!("blk.{layer}.{part}")
}

/// The converter's `permute`: reshape(heads, 2, hd/2, cols).swapaxes(1, 2).
fn interleave(t: &Tensor, heads: usize) -> Tensor {
    let (rows, cols) = t.dims2().unwrap();
    t.reshape((heads, 2, rows / heads / 2, cols))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape((rows, cols))
        .unwrap()
}

/// `rope_freqs` as the converter computes it (in f64, stored as f32).
fn llama3_factors(cfg: &LlamaConfig, s: llama32::config::Llama3RopeScaling) -> Vec<f32> {
    let (d, base) = (cfg.head_dim as f64, f64::from(cfg.rope_theta));
    let (factor, lo, hi) = (
        f64::from(s.factor),
        f64::from(s.low_freq_factor),
        f64::from(s.high_freq_factor),
    );
    let old = s.original_max_position_embeddings as f64;
    (0..cfg.head_dim / 2)
        .map(|i| {
            let freq = 1.0 / base.powf(2.0 * i as f64 / d);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            let f = if wavelen < old / hi {
                1.0
            } else if wavelen > old / lo {
                factor
            } else {
                let smooth = (old / wavelen - lo) / (hi - lo);
                1.0 / ((1.0 - smooth) / factor + smooth)
            };
            f as f32
        })
        .collect()
}

/// `tokenizer.ggml.*` and the chat template, from the fixture's tokenizer files.
fn tokenizer_meta(dir: &Path) -> Vec<(String, Value)> {
    let tj: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer.json")).unwrap()).unwrap();
    let mut by_id: HashMap<u64, (String, i32)> = HashMap::new();
    for (tok, id) in tj["model"]["vocab"].as_object().unwrap() {
        by_id.insert(id.as_u64().unwrap(), (tok.clone(), 1));
    }
    for a in tj["added_tokens"].as_array().unwrap() {
        let kind = if a["special"].as_bool().unwrap() { 3 } else { 4 };
        by_id.insert(
            a["id"].as_u64().unwrap(),
            (a["content"].as_str().unwrap().to_string(), kind),
        );
    }
    let n = by_id.len() as u64;
    let tokens = (0..n).map(|i| Value::String(by_id[&i].0.clone())).collect();
    let types = (0..n).map(|i| Value::I32(by_id[&i].1)).collect();
    let merges = tj["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| match m {
            serde_json::Value::String(s) => Value::String(s.clone()),
            pair => Value::String(format!("{} {}", pair[0].as_str().unwrap(), pair[1].as_str().unwrap())),
        })
        .collect();
    let tc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap()).unwrap();
    vec![
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("llama-bpe".into())),
        ("tokenizer.ggml.tokens".into(), Value::Array(tokens)),
        ("tokenizer.ggml.token_type".into(), Value::Array(types)),
        ("tokenizer.ggml.merges".into(), Value::Array(merges)),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(128000)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(128009)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(true)),
        (
            "tokenizer.chat_template".into(),
            Value::String(tc["chat_template"].as_str().unwrap().into()),
        ),
    ]
}

fn load(path: &Path, dtype: ComputeDType) -> Engine {
    let opts = LoadOptions {
        dtype: Some(dtype),
        ..Default::default()
    };
    Engine::load(path, &opts).unwrap()
}

fn greedy(engine: &Engine, prompt: &str, n: usize) -> Vec<u32> {
    let request = GenerateRequest {
        max_tokens: n,
        sampling: SamplingParams::greedy(),
        ..Default::default()
    };
    engine
        .generate(prompt, &request, |_| std::ops::ControlFlow::Continue(()))
        .unwrap()
        .token_ids
}

#[test]
fn f32_gguf_gives_the_tokens_of_the_safetensors_checkpoint() {
    // tied-bf16-llama3: llama3 rope scaling through `rope_freqs`, tied output; untied-f16-
    // sharded: grouped-query attention (4 query heads, 1 key head), separate `output`.
    for name in ["tied-bf16-llama3", "untied-f16-sharded"] {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("model-f32.gguf");
        write_gguf(name, GgmlDType::F32, &file);
        let (gguf, st) = (load(&file, ComputeDType::F32), load(&fixture(name), ComputeDType::F32));
        let shape = |c: &LlamaConfig| {
            let c = c.clone();
            (
                c.hidden_size,
                c.num_hidden_layers,
                c.num_key_value_heads,
                c.head_dim,
                c.vocab_size,
                c.tie_word_embeddings,
            )
        };
        assert_eq!(shape(gguf.config()), shape(st.config()), "{name}");
        for case in &expected(name).prompts {
            assert_eq!(
                greedy(&gguf, &case.text, 16),
                greedy(&st, &case.text, 16),
                "{name}: {}",
                case.name
            );
        }
        // A directory holding the one GGUF file loads it too.
        assert_eq!(shape(load(dir.path(), ComputeDType::F32).config()), shape(st.config()));
    }
}

#[test]
fn q8_0_gguf_keeps_its_numbers_and_follows_in_situ_q8_0() {
    let name = "tied-f32-mha";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("model-q8_0.gguf");
    write_gguf(name, GgmlDType::Q8_0, &file);
    // Without --dtype a Q8_0 file runs as q8_0 on the CPU, its blocks kept as stored.
    // f32 keys and values: the comparison is of the weights alone.
    let exact_kv = LoadOptions {
        kv_dtype: Some(llama32::KvDType::F32),
        ..Default::default()
    };
    let gguf = Engine::load(&file, &exact_kv).unwrap();
    assert_eq!(gguf.dtype(), ComputeDType::Q8_0);
    let note = gguf.conversion_note().unwrap();
    assert!(note.contains("Q8_0 kept as stored"), "{note}");
    // Against our q8_0 of the same f32 weights (the file's embedding rows are Q8_0 too, and
    // llama.cpp rounds 8-bit values against the f32 scale where we use the stored f16 one):
    // the difference is of the size of q8_0's own difference from f32 (this random
    // fixture's peaked logits make both large; a wrong scale or row order would make KL
    // explode and top-1 agreement vanish). The stored numbers themselves are checked
    // exactly in the library's unit tests.
    let st = Engine::load(
        &fixture(name),
        &LoadOptions {
            dtype: Some(ComputeDType::Q8_0),
            ..exact_kv
        },
    )
    .unwrap();
    let f32 = load(&fixture(name), ComputeDType::F32);
    let text = "The quick brown fox jumps over the lazy dog while the farmer counts his sheep, \
                one by one, until the sun sets behind the hills and the evening bells ring out.";
    let ids = st.tokenize(text).unwrap();
    let kl = |a: &Engine, b: &Engine| {
        let r = llama32::perplexity::perplexity(a, &ids[1..], Some(ids[0]), 16, 2, Some(b)).unwrap();
        (r.mean_kl.unwrap(), r.top1_agreement.unwrap())
    };
    let (kl_files, top1_files) = kl(&gguf, &st);
    let (kl_quant, top1_quant) = kl(&st, &f32);
    eprintln!("Q8_0 GGUF vs in-situ q8_0: KL {kl_files:.3e}, top-1 {top1_files:.3}; q8_0 vs f32: KL {kl_quant:.3e}, top-1 {top1_quant:.3}");
    assert!(
        kl_files < 2.0 * kl_quant + 1e-3 && top1_files >= 0.75,
        "KL {kl_files}, top-1 {top1_files}"
    );
}

#[test]
fn sub_8_bit_gguf_runs_as_q4k_m_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("model-q4_0.gguf");
    write_gguf("tied-f32-mha", GgmlDType::Q4_0, &file);
    let engine = Engine::load(&file, &LoadOptions::default()).unwrap();
    assert_eq!(engine.dtype(), ComputeDType::Q4KM);
    let note = engine.conversion_note().unwrap();
    assert!(note.contains("Q4_0 dequantized and converted to q4k_m"), "{note}");
    assert_eq!(greedy(&engine, "Hello", 4).len(), 4);
}

#[test]
fn tokenizer_and_template_come_from_the_metadata() {
    let name = "tied-f32-mha";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.gguf");
    write_gguf(name, GgmlDType::F32, &file);
    let (tok, template) = llama32::checkpoint::open_text(&file).unwrap();
    let reference = llama32::Tokenizer::from_file(&fixture(name).join("tokenizer.json")).unwrap();
    let cases: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(common::fixtures_dir().join("tokenizer_cases.json")).unwrap())
            .unwrap();
    for case in &cases {
        let text = case["text"].as_str().unwrap();
        let ids = tok.encode(text, true).unwrap();
        assert_eq!(ids, reference.encode(text, true).unwrap(), "{text:?}");
        assert_eq!(tok.decode(&ids, false).unwrap(), reference.decode(&ids, false).unwrap());
    }
    let messages = [llama32::Message::text("user", "Hi there")];
    let options = llama32::RenderOptions {
        add_generation_prompt: true,
        date: Some("26 Jul 2024".into()),
        ..Default::default()
    };
    let ours = template.unwrap().render(&messages, None, &options).unwrap();
    let theirs = llama32::ChatTemplate::from_dir(&fixture(name))
        .unwrap()
        .unwrap()
        .render(&messages, None, &options)
        .unwrap();
    assert_eq!(ours, theirs);
    let engine = load(&file, ComputeDType::F32);
    // eos 128009 plus the other end-of-turn control tokens llama.cpp stops at.
    assert_eq!(engine.eos_ids(), &[128001, 128008, 128009]);
}

/// Loads `bytes` as a GGUF file and returns the error message.
fn refused(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.gguf");
    std::fs::write(&file, bytes).unwrap();
    match Engine::load(&file, &LoadOptions::default()) {
        Err(e @ Error::Gguf { .. }) => e.to_string(),
        Err(other) => panic!("not a GGUF error: {other}"),
        Ok(_) => panic!("loaded"),
    }
}

/// A header with `kvs` (key, type, value bytes) and one tensor.
fn hand_made(kvs: &[(&str, u32, Vec<u8>)], tensor: (&str, &[u64], u32, u64), data: usize) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(1u64.to_le_bytes());
    b.extend((kvs.len() as u64).to_le_bytes());
    let string = |b: &mut Vec<u8>, s: &str| {
        b.extend((s.len() as u64).to_le_bytes());
        b.extend(s.as_bytes());
    };
    for (k, ty, v) in kvs {
        string(&mut b, k);
        b.extend(ty.to_le_bytes());
        b.extend(v);
    }
    let (name, dims, ty, offset) = tensor;
    string(&mut b, name);
    b.extend((dims.len() as u32).to_le_bytes());
    for d in dims {
        b.extend(d.to_le_bytes());
    }
    b.extend(ty.to_le_bytes());
    b.extend(offset.to_le_bytes());
    b.resize(b.len().div_ceil(32) * 32 + data, 0);
    b
}

fn string_value(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u64).to_le_bytes().to_vec();
    v.extend(s.as_bytes());
    v
}

#[test]
fn malformed_gguf_files_get_named_errors() {
    let arch = ("general.architecture", 8, string_value("llama"));
    let ok_tensor = ("token_embd.weight", &[32u64, 4][..], 0, 0);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"GGUF".to_vec(), "GGUF"),
        (b"GGUX\x03\0\0\0".to_vec(), "not a GGUF file"),
        (
            hand_made(
                std::slice::from_ref(&arch),
                ("token_embd.weight", &[32, 4], 0, 1 << 40),
                512,
            ),
            "past the end",
        ),
        (
            hand_made(std::slice::from_ref(&arch), ("token_embd.weight", &[32, 4], 0, 8), 512),
            "not aligned",
        ),
        (
            hand_made(std::slice::from_ref(&arch), ("token_embd.weight", &[32, 4], 99, 0), 512),
            "99",
        ),
        (
            hand_made(std::slice::from_ref(&arch), ("token_embd.weight", &[30, 4], 8, 0), 512),
            "blocks",
        ),
        (
            hand_made(
                std::slice::from_ref(&arch),
                ("token_embd.weight", &[1 << 62, 1 << 62], 0, 0),
                64,
            ),
            "overflow",
        ),
        (
            hand_made(&[("general.alignment", 4, 0u32.to_le_bytes().to_vec())], ok_tensor, 512),
            "GGUF",
        ),
        (
            hand_made(
                &[("general.alignment", 4, 24u32.to_le_bytes().to_vec())],
                ok_tensor,
                512,
            ),
            "power of two",
        ),
        (
            hand_made(&[("general.architecture", 8, string_value("gemma"))], ok_tensor, 512),
            "`gemma`",
        ),
        (
            hand_made(std::slice::from_ref(&arch), ok_tensor, 512),
            "llama.embedding_length",
        ),
    ];
    for (bytes, needle) in cases {
        let msg = refused(&bytes);
        assert!(msg.contains("bad.gguf") && msg.contains(needle), "{needle}: {msg}");
    }
}

#[test]
fn a_directory_with_several_gguf_files_asks_which() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["a-Q8_0.gguf", "a-Q4_K_M.gguf"] {
        std::fs::write(dir.path().join(f), b"GGUF").unwrap();
    }
    let err = Engine::load(dir.path(), &LoadOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("a-Q4_K_M.gguf, a-Q8_0.gguf") && err.contains("name the one"),
        "{err}"
    );
}

#[test]
fn tokenizer_metadata_we_cannot_rebuild_is_refused_by_name() {
    let set = |key: &'static str, value: Value| {
        move |meta: &mut Vec<(String, Value)>| {
            if let Some(kv) = meta.iter_mut().find(|(k, _)| k == key) {
                kv.1 = value.clone();
            }
        }
    };
    let duplicate = |meta: &mut Vec<(String, Value)>| {
        if let Some((_, Value::Array(tokens))) = meta.iter_mut().find(|(k, _)| k == "tokenizer.ggml.tokens") {
            tokens[7] = tokens[6].clone();
        }
    };
    let dir = tempfile::tempdir().unwrap();
    type Edit = Box<dyn Fn(&mut Vec<(String, Value)>)>;
    let cases: Vec<(Edit, &str)> = vec![
        (
            Box::new(set("tokenizer.ggml.model", Value::String("llama".into()))),
            "tokenizer.ggml.model `llama`",
        ),
        (
            Box::new(set("tokenizer.ggml.pre", Value::String("qwen2".into()))),
            "tokenizer.ggml.pre `qwen2`",
        ),
        (Box::new(duplicate), "appears twice"),
        (
            Box::new(set("tokenizer.ggml.tokens", Value::U32(3))),
            "tokenizer.ggml.tokens",
        ),
        // GGUF arrays hold one type: a token list of numbers.
        (
            Box::new(set("tokenizer.ggml.tokens", Value::Array(vec![Value::U32(1); 3]))),
            "non-string",
        ),
    ];
    for (i, (edit, needle)) in cases.into_iter().enumerate() {
        let file = dir.path().join(format!("tok{i}.gguf"));
        write_gguf_edited("tied-bf16-llama3", GgmlDType::F32, &file, edit);
        let msg = match Engine::load(&file, &LoadOptions::default()) {
            Err(e @ Error::Gguf { .. }) => e.to_string(),
            Err(other) => panic!("{needle}: not a GGUF error: {other}"),
            Ok(_) => panic!("{needle}: loaded"),
        };
        assert!(
            msg.contains(&format!("tok{i}.gguf")) && msg.contains(needle),
            "{needle}: {msg}"
        );
    }
    // A bos_token_id past the token list is no crash: the load goes on or names the problem.
    let file = dir.path().join("bos-out-of-range.gguf");
    write_gguf_edited(
        "tied-bf16-llama3",
        GgmlDType::F32,
        &file,
        set("tokenizer.ggml.bos_token_id", Value::U32(u32::MAX)),
    );
    if let Err(e) = Engine::load(&file, &LoadOptions::default()) {
        assert!(e.to_string().contains("bos-out-of-range.gguf"), "{e}");
    }
    // A tokenizer.json beside the file is used instead of the metadata it cannot rebuild.
    let file = dir.path().join("tok0.gguf");
    std::fs::copy(
        fixture("tied-bf16-llama3").join("tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    assert!(Engine::load(&file, &LoadOptions::default()).is_ok());
}

/// Byte mutations of `bytes` within its first `span` bytes (and sometimes a truncation).
fn mutated(rng: &mut impl rand::Rng, bytes: &[u8], span: usize) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let span = span.min(out.len());
    for _ in 0..rng.random_range(1..6) {
        let at = rng.random_range(0..span);
        out[at] = match rng.random_range(0..3) {
            0 => rng.random(),
            1 => 0xff,
            _ => 0,
        };
    }
    if rng.random_range(0..4) == 0 {
        out.truncate(rng.random_range(0..out.len()));
    }
    out
}

#[test]
fn mutated_headers_are_errors_not_crashes() {
    use rand::SeedableRng;
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.gguf");
    write_gguf("tied-bf16-llama3", GgmlDType::Q8_0, &good);
    let bytes = std::fs::read(&good).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(28);
    // GGUF: the header (magic, counts, metadata, tensor infos) is what a hostile file controls.
    let path = dir.path().join("m.gguf");
    for _ in 0..150 {
        let bad = mutated(&mut rng, &bytes[..bytes.len().min(4 << 20)], 1 << 16);
        std::fs::write(&path, &bad).unwrap();
        let _ = llama32::gguf::GgufFile::open(&path);
    }
    // safetensors: the 8-byte length and the JSON header before the data.
    let st = std::fs::read(fixture("tied-bf16-llama3").join("model.safetensors")).unwrap();
    let header = 8 + u64::from_le_bytes(st[..8].try_into().unwrap()) as usize;
    let model = dir.path().join("st");
    std::fs::create_dir(&model).unwrap();
    for name in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        std::fs::copy(fixture("tied-bf16-llama3").join(name), model.join(name)).unwrap();
    }
    for _ in 0..150 {
        let mut bad = mutated(&mut rng, &st[..header + 4096], header);
        bad.resize(st.len().min(bad.len() + 64), 0);
        std::fs::write(model.join("model.safetensors"), &bad).unwrap();
        let _ = llama32::weights::Weights::open(&model);
    }
}
