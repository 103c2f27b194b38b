"""What HF transformers computes on the real test model (scripts/fetch-real-model.sh):
greedy chat answers in f32 from the GGUF file as transformers loads it (dequantized), and
the perplexity of a text. Writes tests/fixtures/real_model_expected.json.

    python scripts/real_model_reference.py $(scripts/fetch-real-model.sh)

Needs torch, transformers, gguf and accelerate (pip); run once, the output is committed.
"""
import json, math, os, sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

path = sys.argv[1]
d, name = os.path.dirname(path), os.path.basename(path)
tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, torch_dtype=torch.float32)
model.eval()

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain in one sentence why the sky is blue.",
]
TEXT = (
    "The river wound slowly through the valley, past the old mill and the church with its "
    "grey tower. In spring the meadows on either bank filled with flowers, and children from "
    "the village came down to the water to fish and to watch the boats go by. Nobody could "
    "remember a time when the river had not been there, and nobody expected it ever to change."
)
chats = []
for p in PROMPTS:
    ids = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, return_tensors="pt")
    if not torch.is_tensor(ids):
        ids = ids["input_ids"]
    out = model.generate(ids, max_new_tokens=24, do_sample=False)
    chats.append({"prompt": p, "prompt_ids": ids[0].tolist(), "greedy_ids": out[0][ids.shape[1]:].tolist(),
                  "greedy_text": tok.decode(out[0][ids.shape[1]:])})
ids = tok(TEXT, return_tensors="pt")["input_ids"]
with torch.no_grad():
    logits = model(ids).logits[0]
nll = torch.nn.functional.cross_entropy(logits[:-1], ids[0][1:]).item()
expected = {"file": name, "transformers": __import__("transformers").__version__, "chats": chats,
            "text": TEXT, "text_ids": ids[0].tolist(), "text_perplexity": math.exp(nll)}
out = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "real_model_expected.json")
with open(out, "w") as f:
    json.dump(expected, f, indent=1)
print(json.dumps({k: v for k, v in expected.items() if k != "text_ids"}, indent=1)[:3000])
