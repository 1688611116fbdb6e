#!/usr/bin/env bash
# bench/gpu.py on a GPU machine that has torch, transformers, peft, accelerate and sentence-transformers but no package
# index (and not densekit's other dependencies). Two halves, from the repository root:
#
#   bash bench/gpu.sh prepare         where pip can download: writes .gpu/ (about 20 MB), the carry list:
#                                     .gpu/wheels  the pure-Python releases densekit is tested with that a CUDA image
#                                                  may lack or hold older: transformers (BlockRank
#                                                  needs >= 5.24), peft, accelerate, sentence-transformers, plus regex for
#                                                  CPython 3.12 (transformers checks its version on import) and datasets
#                                                  with dill and multiprocess (sentence-transformers imports datasets);
#                                     .gpu/tokenizers  the all-MiniLM-L6-v2 and SmolLM2 tokenizers (from the packaged models)
#   bash bench/gpu.sh run OUT.jsonl   on the GPU machine with .gpu/ beside: installs the wheels and this checkout's
#                                     densekit (copied as the package layout of pyproject.toml, so never stale) into
#                                     /tmp/densekit-gpu (nothing else is touched), prints the versions it will use and
#                                     runs bench/gpu.py, JSON lines to OUT.jsonl; options
#                                     after OUT go to bench/gpu.py (`run /tmp/x.jsonl --smoke` rehearses it on a CPU)
#
# densekit imports nothing at start-up that the GPU machine lacks (faiss, datasets, beir, bm25s, gguf, PyStemmer,
# pytrec_eval load only where used); tests/test_gpu_bench.py runs the smoke version with those imports blocked.
set -euo pipefail
cmd=${1:-}
case "$cmd" in
  prepare)
    rm -rf .gpu/wheels .gpu/tokenizers
    mkdir -p .gpu/wheels .gpu/tokenizers
    python -m pip download -q --no-deps -d .gpu/wheels transformers==5.24.0 peft==0.21.2 accelerate==1.16.0 \
        sentence-transformers==6.3.0
    python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .gpu/wheels "regex==$(python -c 'import regex; print(regex.__version__)')" datasets==5.2.0 dill==0.4.1 \
        multiprocess==0.70.19
    python - <<'PY'
from transformers import AutoTokenizer

from densekit.core.models import resolve

for name in ("sentence-transformers/all-MiniLM-L6-v2", "HuggingFaceTB/SmolLM2-135M-Instruct"):
    AutoTokenizer.from_pretrained(resolve(name)).save_pretrained(f".gpu/tokenizers/{name.split('/')[-1]}")
PY
    du -sh .gpu
    ;;
  run)
    out=${2:?usage: bash bench/gpu.sh run OUT.jsonl [bench/gpu.py options]}
    site=/tmp/densekit-gpu
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .gpu/wheels/*.whl
    rm -rf "$site/densekit" && mkdir -p "$site/densekit" && cp densekit/*.py "$site/densekit/"
    for pkg in core retriever reranker eval; do cp -r "$pkg" "$site/densekit/$pkg"; done
    export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
    python3 -P -c "import torch, transformers, peft, accelerate, sentence_transformers, densekit.core.device as d
print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), '| transformers', transformers.__version__,
      '| sentence-transformers', sentence_transformers.__version__, '| densekit from', d.__file__)" || true
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    python3 bench/gpu.py --tokenizers .gpu/tokenizers --out "$out" "${@:3}"
    ;;
  *)
    echo "usage: bash bench/gpu.sh prepare | run OUT.jsonl [bench/gpu.py options]" >&2
    exit 2
    ;;
esac
