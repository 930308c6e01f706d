#!/usr/bin/env bash
# The GPU checks as one prepared script, for a lent GPU machine (no TensorFlow there: KERAS_BACKEND=jax).
# Wheels the machine lacks (keras, and whatever `python3 -c "import melanoma_data.build"` says is missing)
# travel in .whl/ (see the README); they are installed to /tmp/site first. Then: a small generated dataset
# at 256 px, the effnet/fusion plugins' smoke test, and images/s of the full effnet plugin, of a bare Keras
# B0 step and of timm's efficientnet_b0, side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export KERAS_BACKEND=jax
OUT=${OUT:-/tmp/gpu-check}
VERSION=$(python3 - "$OUT" <<'PY'
import sys
from melanoma_data import build, synth
from melanoma_data.config import PreprocessConfig
root = sys.argv[1]
synth.write_dataset(f"{root}/in", n=1024, layout="kaggle2020", seed=0, sizes=[(320, 240)], defects=0.3,
                    melanoma_rate=0.1)
cfg = PreprocessConfig.from_dict({"square": {"size": 256}, "partition_size": 128})
print(build.preprocess([f"{root}/in"], f"{root}/out", cfg, workers=0).version_url)
PY
)
python3 bench/gpu_smoke.py "$VERSION" effnet fusion
python3 bench/train_gpu.py --size 256 --batch 128 --plugin "$VERSION"
