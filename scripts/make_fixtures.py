#!/usr/bin/env python3
"""Build the ground-truth test fixtures for the `llama32` Rust inference engine.

What it builds (under ``tests/fixtures/`` by default):

* Three tiny random-weight Llama 3.2-shaped checkpoints, created with
  transformers' own ``LlamaForCausalLM`` and written with its own
  ``save_pretrained`` (safetensors), each in ``tests/fixtures/<name>/``:

  - ``tied-bf16-llama3``   tied embeddings, GQA 4 q-heads / 2 kv-heads, explicit
                           head_dim=16 (!= hidden/heads = 8), 2 layers, llama3
                           rope scaling, bfloat16, single ``model.safetensors``,
                           Instruct-like generation_config (temperature 0.6,
                           top_p 0.9, do_sample true).
  - ``untied-f16-sharded`` untied lm_head, 4 q-heads / 1 kv-head, NO head_dim
                           key in config.json (defaults to hidden/heads = 8),
                           2 layers, rope_theta 10000, rope_scaling null,
                           float16, sharded into 3 files with
                           ``model.safetensors.index.json``.
  - ``tied-f32-mha``       tied embeddings, MHA 2/2 heads, explicit head_dim=16
                           (== hidden/heads), 3 layers, llama3 rope scaling,
                           float32, single file.

  Shared: vocab 128256, hidden 32, intermediate 64, bos 128000,
  eos [128001, 128008, 128009], rms_norm_eps 1e-5, silu, no biases,
  max_position_embeddings 131072.  Each directory also gets the real Llama 3.2
  ``tokenizer.json`` / ``tokenizer_config.json`` (copied from
  ``--tokenizer-dir``), ``generation_config.json``, and the reference outputs:

  - ``expected.safetensors``: float32 tensors ``logits.<prompt>`` [128256],
    the logits at the last prompt position.
  - ``expected.json``: prompt text and ids, 24 greedy tokens (repeated full
    forward passes + argmax, no KV cache, no EOS stopping), their decoded text,
    the minimum over the greedy steps of (top1 - top2) / max|logit|, and
    max|logit| of the prompt's last row.

  The reference is computed in float32 on CPU with eager attention from the
  weights *as stored on disk* (the checkpoint is saved, then reloaded with
  ``dtype=torch.float32``), so bf16/f16 rounding is already baked in.

  config.json is written in the format of the real Llama 3.2 checkpoints
  (top-level ``rope_theta`` + ``rope_scaling``).  transformers >= 5 natively
  writes a ``rope_parameters`` dict instead; this script rewrites that key and
  checks that transformers still loads the rewritten config identically.

* ``tests/fixtures/tokenizer_cases.json``: HF tokenizer ids
  (add_special_tokens=True) and decodes for a set of tricky strings.

Weights are random (fixed seeds) but scaled up (embeddings std 1.0, linear
layers std 0.5, RMSNorm weights 1 + 0.1*N(0,1)) so that logits are well spread.
For each fixture, seeds are tried in order until every greedy step has a
relative top-1/top-2 gap above ``--min-gap``; the chosen seed is recorded in
expected.json.

Rerun (from the repo root):

    pip install torch transformers safetensors numpy
    python scripts/make_fixtures.py [--tokenizer-dir ../shared/llama-3.2-tokenizer] [--out-dir tests/fixtures]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

import numpy as np
import torch

import safetensors
from safetensors.torch import load_file, save_file

import transformers
from transformers import AutoConfig, AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

VOCAB = 128256
BOS = 128000
EOS_IDS = [128001, 128008, 128009]
N_GREEDY = 24
LLAMA3_ROPE_SCALING = {
    "factor": 32.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3",
}

SHORT_PROMPT = "Once upon a time, in a land far away, there lived a"

EMBED_STD = 1.0
LINEAR_STD = 0.5
NORM_NOISE = 0.1
MAX_SEED_TRIES = 300

FIXTURES = [
    {
        "name": "tied-bf16-llama3",
        "dtype": "bf16",
        "torch_dtype": torch.bfloat16,
        "tie_word_embeddings": True,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "num_hidden_layers": 2,
        "rope_theta": 500000.0,
        "rope_scaling": LLAMA3_ROPE_SCALING,
        "shards": 1,
        "instruct_generation": True,
        "prompts": ["short", "long"],
        "base_seed": 1000,
    },
    {
        "name": "untied-f16-sharded",
        "dtype": "f16",
        "torch_dtype": torch.float16,
        "tie_word_embeddings": False,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "head_dim": None,  # removed from config.json -> loader default hidden/heads = 8
        "num_hidden_layers": 2,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "shards": 3,
        "instruct_generation": False,
        "prompts": ["short"],
        "base_seed": 2000,
    },
    {
        "name": "tied-f32-mha",
        "dtype": "f32",
        "torch_dtype": torch.float32,
        "tie_word_embeddings": True,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "num_hidden_layers": 3,
        "rope_theta": 500000.0,
        "rope_scaling": LLAMA3_ROPE_SCALING,
        "shards": 1,
        "instruct_generation": False,
        "prompts": ["short"],
        "base_seed": 3000,
    },
]

LONG_SENTENCES = [
    "The river wound slowly through the valley, carrying the last light of the afternoon toward the distant sea.",
    "On its banks stood a small village whose houses were built of grey stone and roofed with dark slate.",
    "Every morning the baker opened his shutters before dawn, and the smell of warm bread drifted along the narrow streets.",
    "Children ran past the fountain in the square, chasing one another and laughing at nothing in particular.",
    "The old clockmaker, who had lived there longer than anyone could remember, repaired watches for travellers and farmers alike.",
    "He kept a notebook in which he wrote down the name of every clock he had ever mended, together with the date and the weather.",
    "In winter the snow covered the hills, and the shepherds brought their flocks down to the sheltered fields near the mill.",
    "In summer the meadows were full of poppies and the air hummed with bees that had come from the orchards on the slope.",
    "Once a year a fair came to the village, with musicians, jugglers, and merchants selling cloth, spices, and copper pots.",
    "People walked for many miles to attend it, and for three days the square was crowded from morning until late at night.",
    "The schoolteacher used the occasion to tell her pupils about the towns the merchants came from and the roads they had travelled.",
    "She drew maps on the blackboard, marking rivers, mountains, and bridges, and asked the children to imagine the journey.",
    "Some of them dreamed of leaving one day to see the great cities of the south, while others wished only to stay near home.",
    "The clockmaker listened to their plans with a patient smile, because he too had once been young and restless.",
    "He told them that every road leads somewhere, but that the most important thing is to remember the way back.",
    "Years later, when many of those children had grown up and gone away, they would still think of the river and the bread and the clocks.",
]


def long_prompt_text(tok) -> str:
    """Deterministically build an English text of 800..900 tokens (incl. BOS)."""
    paragraphs = []
    sentences = []
    i = 0
    while True:
        s = LONG_SENTENCES[i % len(LONG_SENTENCES)]
        rnd = i // len(LONG_SENTENCES)
        if rnd > 0:
            # vary the repeated rounds a little so the text is not a pure loop
            s = s.replace("The ", f"In the telling number {rnd + 1}, the ", 1) if s.startswith("The ") else s
        sentences.append(s)
        if len(sentences) == 4:
            paragraphs.append(" ".join(sentences))
            sentences = []
        text = "\n\n".join(paragraphs + ([" ".join(sentences)] if sentences else []))
        n = len(tok(text)["input_ids"])
        if n >= 800:
            return text
        i += 1


def make_config(fx: dict) -> LlamaConfig:
    kw = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=fx["num_hidden_layers"],
        num_attention_heads=fx["num_attention_heads"],
        num_key_value_heads=fx["num_key_value_heads"],
        hidden_act="silu",
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        bos_token_id=BOS,
        eos_token_id=list(EOS_IDS),
        tie_word_embeddings=fx["tie_word_embeddings"],
        attention_bias=False,
        mlp_bias=False,
        rope_theta=fx["rope_theta"],
        rope_scaling=dict(fx["rope_scaling"]) if fx["rope_scaling"] else None,
    )
    if fx["head_dim"] is not None:
        kw["head_dim"] = fx["head_dim"]
    cfg = LlamaConfig(**kw)
    cfg._attn_implementation = "eager"
    return cfg


def init_weights(model: LlamaForCausalLM, seed: int, storage_dtype: torch.dtype) -> None:
    """Deterministic large-scale init, then round to the storage dtype and back."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        seen = set()
        for name, p in sorted(model.named_parameters(remove_duplicate=True), key=lambda kv: kv[0]):
            if id(p) in seen:
                continue
            seen.add(id(p))
            if name.endswith("norm.weight"):
                w = 1.0 + NORM_NOISE * torch.randn(p.shape, generator=g, dtype=torch.float32)
            elif "embed_tokens" in name or name == "lm_head.weight":
                w = EMBED_STD * torch.randn(p.shape, generator=g, dtype=torch.float32)
            elif name.endswith("proj.weight"):
                w = LINEAR_STD * torch.randn(p.shape, generator=g, dtype=torch.float32)
            else:
                raise RuntimeError(f"unexpected parameter {name}")
            p.copy_(w.to(storage_dtype).to(torch.float32))
    if model.config.tie_word_embeddings:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


@torch.no_grad()
def last_logits(model, ids: list[int]) -> torch.Tensor:
    x = torch.tensor([ids], dtype=torch.long)
    out = model(input_ids=x, use_cache=False, logits_to_keep=1)
    row = out.logits[0, -1].to(torch.float32)
    assert row.shape == (VOCAB,)
    return row


def rel_top2_gap(row: torch.Tensor) -> float:
    top = torch.topk(row, 2).values
    return float((top[0] - top[1]) / row.abs().max())


@torch.no_grad()
def evaluate(model, prompt_ids: list[int]) -> dict:
    first = last_logits(model, prompt_ids)
    ids = list(prompt_ids)
    greedy = []
    gaps = []
    row = first
    for step in range(N_GREEDY):
        if step > 0:
            row = last_logits(model, ids)
        nxt = int(torch.argmax(row))
        gaps.append(rel_top2_gap(row))
        greedy.append(nxt)
        ids.append(nxt)
    return {
        "logits": first.clone(),
        "greedy_ids": greedy,
        "min_rel_top2_gap": min(gaps),
        "max_abs_logit": float(first.abs().max()),
    }


def acceptable(res: dict, min_gap: float) -> bool:
    return res["min_rel_top2_gap"] > min_gap and not any(t in EOS_IDS for t in res["greedy_ids"])


def rewrite_config_json(path: str, fx: dict) -> dict:
    """Turn transformers' config.json into the real Llama 3.2 layout."""
    with open(path) as f:
        cfg = json.load(f)
    written = json.loads(json.dumps(cfg))
    rp = cfg.pop("rope_parameters", None)
    if rp is not None:
        # sanity: transformers put what we asked for there
        assert rp.get("rope_theta") == fx["rope_theta"], rp
    cfg.pop("rope_scaling", None)
    cfg.pop("rope_theta", None)
    new = {}
    for k, v in cfg.items():
        new[k] = v
        if k == "rms_norm_eps":
            new["rope_scaling"] = dict(fx["rope_scaling"]) if fx["rope_scaling"] else None
            new["rope_theta"] = fx["rope_theta"]
    assert "rope_theta" in new
    if fx["head_dim"] is None:
        new.pop("head_dim", None)
    new = dict(sorted(new.items()))
    with open(path, "w") as f:
        json.dump(new, f, indent=2)
        f.write("\n")
    return written


def verify_config(fx: dict, d: str) -> None:
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    assert cfg["vocab_size"] == VOCAB
    assert cfg["hidden_size"] == 32 and cfg["intermediate_size"] == 64
    assert cfg["num_hidden_layers"] == fx["num_hidden_layers"]
    assert cfg["num_attention_heads"] == fx["num_attention_heads"]
    assert cfg["num_key_value_heads"] == fx["num_key_value_heads"]
    assert cfg["bos_token_id"] == BOS and cfg["eos_token_id"] == EOS_IDS
    assert cfg["rms_norm_eps"] == 1e-5 and cfg["hidden_act"] == "silu"
    assert cfg["attention_bias"] is False and cfg["mlp_bias"] is False
    assert cfg["max_position_embeddings"] == 131072
    assert cfg["tie_word_embeddings"] is fx["tie_word_embeddings"]
    assert cfg["rope_theta"] == fx["rope_theta"]
    assert "rope_parameters" not in cfg
    if fx["rope_scaling"] is None:
        assert "rope_scaling" in cfg and cfg["rope_scaling"] is None
    else:
        assert cfg["rope_scaling"] == fx["rope_scaling"] and cfg["rope_scaling"]["rope_type"] == "llama3"
    if fx["head_dim"] is None:
        assert "head_dim" not in cfg
    else:
        assert cfg["head_dim"] == fx["head_dim"]
    with open(os.path.join(d, "generation_config.json")) as f:
        gen = json.load(f)
    assert gen["bos_token_id"] == BOS and gen["eos_token_id"] == EOS_IDS
    if fx["instruct_generation"]:
        assert gen["temperature"] == 0.6 and gen["top_p"] == 0.9 and gen["do_sample"] is True

    # transformers must read the rewritten config back to the intended model
    rc = AutoConfig.from_pretrained(d)
    assert rc.head_dim == (fx["head_dim"] if fx["head_dim"] is not None else 32 // fx["num_attention_heads"])
    rp = dict(rc.rope_parameters)
    assert rp["rope_theta"] == fx["rope_theta"], rp
    if fx["rope_scaling"] is None:
        assert rp["rope_type"] == "default", rp
    else:
        for k, v in fx["rope_scaling"].items():
            assert rp[k] == v, (k, rp)


def verify_weights(fx: dict, d: str, model_ref: LlamaForCausalLM) -> dict:
    """Check the safetensors on disk (names, dtypes, sharding, tying)."""
    files = sorted(f for f in os.listdir(d) if f.endswith(".safetensors") and f != "expected.safetensors")
    tensors = {}
    dtypes = set()
    for fn in files:
        with safetensors.safe_open(os.path.join(d, fn), framework="pt") as f:
            for k in f.keys():
                assert k not in tensors, f"duplicate tensor {k}"
                t = f.get_tensor(k)
                tensors[k] = (fn, t)
                dtypes.add(t.dtype)
    assert dtypes == {fx["torch_dtype"]}, dtypes
    index_path = os.path.join(d, "model.safetensors.index.json")
    if fx["shards"] == 1:
        assert files == ["model.safetensors"], files
        assert not os.path.exists(index_path)
    else:
        assert len(files) >= 2, files
        assert files == [f"model-{i:05d}-of-{fx['shards']:05d}.safetensors" for i in range(1, fx["shards"] + 1)], files
        with open(index_path) as f:
            index = json.load(f)
        wm = index["weight_map"]
        assert set(wm) == set(tensors), (set(wm) ^ set(tensors))
        for k, (fn, _) in tensors.items():
            assert wm[k] == fn, (k, wm[k], fn)
    if fx["tie_word_embeddings"]:
        assert "lm_head.weight" not in tensors
    else:
        assert "lm_head.weight" in tensors
    expected_names = {"model.embed_tokens.weight", "model.norm.weight"}
    for i in range(fx["num_hidden_layers"]):
        p = f"model.layers.{i}."
        expected_names |= {
            p + "input_layernorm.weight",
            p + "post_attention_layernorm.weight",
            p + "self_attn.q_proj.weight",
            p + "self_attn.k_proj.weight",
            p + "self_attn.v_proj.weight",
            p + "self_attn.o_proj.weight",
            p + "mlp.gate_proj.weight",
            p + "mlp.up_proj.weight",
            p + "mlp.down_proj.weight",
        }
    if not fx["tie_word_embeddings"]:
        expected_names.add("lm_head.weight")
    assert set(tensors) == expected_names, set(tensors) ^ expected_names
    hd = fx["head_dim"] or 32 // fx["num_attention_heads"]
    l0 = "model.layers.0.self_attn."
    assert tuple(tensors[l0 + "q_proj.weight"][1].shape) == (fx["num_attention_heads"] * hd, 32)
    assert tuple(tensors[l0 + "k_proj.weight"][1].shape) == (fx["num_key_value_heads"] * hd, 32)
    assert tuple(tensors[l0 + "o_proj.weight"][1].shape) == (32, fx["num_attention_heads"] * hd)
    # the in-memory (rounded) weights equal what is on disk
    sd = model_ref.state_dict()
    for k, (_, t) in tensors.items():
        assert torch.equal(t.to(torch.float32), sd[k]), k
    return {k: fn for k, (fn, _) in tensors.items()}


def build_fixture(fx: dict, out_dir: str, tok_dir: str, prompts: dict, min_gap: float, tok) -> dict:
    name = fx["name"]
    d = os.path.join(out_dir, name)
    cfg = make_config(fx)
    prompt_ids = {}
    for pn in fx["prompts"]:
        ids = tok(prompts[pn])["input_ids"]
        assert ids[0] == BOS and ids.count(BOS) == 1, ids[:3]
        prompt_ids[pn] = ids

    # 1. seed search in memory (weights already rounded to storage dtype)
    chosen = None
    for seed in range(fx["base_seed"], fx["base_seed"] + MAX_SEED_TRIES):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg).eval()
        init_weights(model, seed, fx["torch_dtype"])
        results = {pn: evaluate(model, ids) for pn, ids in prompt_ids.items()}
        gaps = {pn: r["min_rel_top2_gap"] for pn, r in results.items()}
        ok = all(acceptable(r, min_gap) for r in results.values())
        print(f"[{name}] seed {seed}: min rel top2 gaps {gaps} -> {'OK' if ok else 'reject'}", flush=True)
        if ok:
            chosen = (seed, model, results)
            break
    if chosen is None:
        sys.exit(f"[{name}] no seed in {MAX_SEED_TRIES} tries gave min gap > {min_gap}")
    seed, model, mem_results = chosen

    # 2. save with transformers' own save_pretrained in the storage dtype
    if os.path.exists(d):
        shutil.rmtree(d)
    os.makedirs(d)
    to_save = LlamaForCausalLM(cfg)
    to_save.load_state_dict(model.state_dict())
    to_save = to_save.to(fx["torch_dtype"]).eval()
    gen = GenerationConfig(bos_token_id=BOS, eos_token_id=list(EOS_IDS))
    if fx["instruct_generation"]:
        gen = GenerationConfig(
            bos_token_id=BOS, eos_token_id=list(EOS_IDS), do_sample=True, temperature=0.6, top_p=0.9
        )
    to_save.generation_config = gen
    save_kw = {}
    if fx["shards"] > 1:
        # embed_tokens (8.2 MB) and lm_head (8.2 MB) exceed the limit and get a shard each;
        # all the small layer tensors land in the middle shard -> 3 shards.
        save_kw["max_shard_size"] = "4MB"
    to_save.save_pretrained(d, **save_kw)
    written_cfg = rewrite_config_json(os.path.join(d, "config.json"), fx)
    for fn in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(os.path.join(tok_dir, fn), os.path.join(d, fn))
    leftovers = set(os.listdir(d)) - {
        "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
        "model.safetensors", "model.safetensors.index.json",
    } - {f"model-{i:05d}-of-{fx['shards']:05d}.safetensors" for i in range(1, fx["shards"] + 1)}
    assert not leftovers, leftovers

    verify_config(fx, d)
    weight_map = verify_weights(fx, d, model)

    # 3. reference from the checkpoint as stored on disk, float32, eager, CPU
    ref = LlamaForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
    assert ref.config._attn_implementation == "eager"
    assert ref.config.head_dim == (fx["head_dim"] or 32 // fx["num_attention_heads"])
    if fx["tie_word_embeddings"]:
        assert torch.equal(ref.lm_head.weight, ref.model.embed_tokens.weight)
    for k, v in ref.state_dict().items():
        assert v.dtype == torch.float32
        assert torch.equal(v, model.state_dict()[k]), k
    dtok = AutoTokenizer.from_pretrained(d)

    entries = []
    tensors = {}
    for pn, ids in prompt_ids.items():
        assert dtok(prompts[pn])["input_ids"] == ids
        r = evaluate(ref, ids)
        m = mem_results[pn]
        assert r["greedy_ids"] == m["greedy_ids"], (pn, r["greedy_ids"], m["greedy_ids"])
        assert torch.allclose(r["logits"], m["logits"], rtol=0, atol=1e-4)
        assert acceptable(r, min_gap), (pn, r["min_rel_top2_gap"])
        tensors[f"logits.{pn}"] = r["logits"].contiguous()
        entries.append(
            {
                "name": pn,
                "text": prompts[pn],
                "prompt_ids": ids,
                "greedy_ids": r["greedy_ids"],
                "greedy_text": dtok.decode(r["greedy_ids"]),
                "greedy_text_no_cleanup": dtok.decode(r["greedy_ids"], clean_up_tokenization_spaces=False),
                "min_rel_top2_gap": r["min_rel_top2_gap"],
                "max_abs_logit": r["max_abs_logit"],
            }
        )
        print(
            f"[{name}] {pn}: {len(ids)} prompt tokens, greedy {r['greedy_ids']}, "
            f"min rel gap {r['min_rel_top2_gap']:.5f}, max|logit| {r['max_abs_logit']:.3f}",
            flush=True,
        )

    save_file(tensors, os.path.join(d, "expected.safetensors"), metadata={"format": "pt"})
    back = load_file(os.path.join(d, "expected.safetensors"))
    for k, v in tensors.items():
        assert back[k].dtype == torch.float32 and torch.equal(back[k], v)

    expected = {
        "prompts": entries,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "dtype": fx["dtype"],
        "seed": seed,
        "init": {"embed_std": EMBED_STD, "linear_std": LINEAR_STD, "norm": f"1 + {NORM_NOISE}*N(0,1)"},
        "head_dim": fx["head_dim"] or 32 // fx["num_attention_heads"],
        "n_greedy": N_GREEDY,
        "weight_files": sorted(set(weight_map.values())),
        "notes": (
            "Random-weight LlamaForCausalLM built by scripts/make_fixtures.py. "
            "Reference computed with transformers in float32 on CPU, eager attention, no KV cache, "
            "from the checkpoint reloaded from disk (weights already rounded to the storage dtype). "
            "logits.<name> in expected.safetensors is the full logits row at the last prompt position. "
            "greedy_ids: 24 argmax tokens, each from a full forward pass over prompt+previous greedy tokens; "
            "min_rel_top2_gap = min over those 24 steps of (top1-top2)/max|logit|; "
            "max_abs_logit is for the last-prompt-position row. "
            "greedy_text = tokenizer.decode(greedy_ids) (defaults: skip_special_tokens=False; tokenizer_config says "
            "clean_up_tokenization_spaces=true but transformers>=5 ignores that for BPE tokenizers); "
            "greedy_text_no_cleanup = decode with clean_up_tokenization_spaces=False. Invalid UTF-8 from partial "
            "byte tokens is decoded as U+FFFD. "
            "config.json was rewritten from transformers' native 'rope_parameters' to the real Llama 3.2 layout "
            "(rope_theta + rope_scaling)"
            + ("; the 'head_dim' key was removed (default hidden_size/num_attention_heads)." if fx["head_dim"] is None else ".")
        ),
        "transformers_native_config": written_cfg,
    }
    with open(os.path.join(d, "expected.json"), "w") as f:
        json.dump(expected, f, indent=2, ensure_ascii=False)
        f.write("\n")
    return expected


TOKENIZER_CASES = [
    "Hello, world! This is a plain English sentence.",
    "  leading spaces and trailing spaces   ",
    "multiple     spaces   between    words",
    "first paragraph\n\nsecond paragraph\n",
    "col1\tcol2\t\tcol3",
    "The number 1234567 and 3.14159 and 1,000,000.",
    "I'm sure you don't know what they've done, it's theirs.",
    "你好，世界",
    "Hi 👋🌍!",
    "café naïve résumé",
    "Hello<|eot_id|>world <|begin_of_text|>",
    "",
    "Wait , what ? Yes !",
    " ",
    "def f(x):\n    return x ** 2  # comment",
]


def build_tokenizer_cases(tok, out_dir: str) -> None:
    cases = []
    for text in TOKENIZER_CASES:
        ids = tok(text)["input_ids"]
        assert ids[0] == BOS
        cases.append(
            {
                "text": text,
                "ids": ids,
                "decoded": tok.decode(ids, skip_special_tokens=False),
                "decoded_no_cleanup": tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False),
            }
        )
    with open(os.path.join(out_dir, "tokenizer_cases.json"), "w") as f:
        json.dump(cases, f, indent=2, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {len(cases)} tokenizer cases")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokenizer-dir", default=os.path.join(REPO_ROOT, "..", "shared", "llama-3.2-tokenizer"))
    ap.add_argument("--out-dir", default=os.path.join(REPO_ROOT, "tests", "fixtures"))
    ap.add_argument("--min-gap", type=float, default=3e-3, help="required min relative top-2 gap (brief: > 1e-3; we keep extra margin)")
    ap.add_argument("--only", action="append", help="build only these fixtures (repeatable)")
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    np.random.seed(0)

    tok_dir = os.path.abspath(args.tokenizer_dir)
    out_dir = os.path.abspath(args.out_dir)
    os.makedirs(out_dir, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(tok_dir)

    long_text = long_prompt_text(tok)
    n_long = len(tok(long_text)["input_ids"])
    assert 800 <= n_long <= 900, n_long
    prompts = {"short": SHORT_PROMPT, "long": long_text}

    build_tokenizer_cases(tok, out_dir)
    summary = {}
    for fx in FIXTURES:
        if args.only and fx["name"] not in args.only:
            continue
        e = build_fixture(fx, out_dir, tok_dir, prompts, args.min_gap, tok)
        summary[fx["name"]] = {p["name"]: p["min_rel_top2_gap"] for p in e["prompts"]} | {"seed": e["seed"]}
    print(json.dumps(summary, indent=2))
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")


if __name__ == "__main__":
    main()
