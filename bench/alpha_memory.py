"""Peak memory of decoding an RGBA PNG with transparency: the decoded array is unavoidable (PNG has no
reduced decode), nothing beyond it should be. Target: peak at most ~1.5x the decoded array.

Each measurement runs in a fresh process (peak RSS is a high-water mark): RSS before the decode (file
bytes read, modules imported) is subtracted, and the rest divided by the size of the 16-bit RGBA array
OpenCV decodes. Side by side at one size: ``before``, the whole-image composite (a colour-converted copy,
then float32 arithmetic on the full image); ``strips``, OpenCV's decode composited in 64-row strips in
its own memory; ``now``, the pipeline's decode (PNG rows decompressed, unfiltered and composited a few MB
at a time: the 4-channel array is never built). Then ``now`` at the largest size ``max_pixels`` allows.

Run: ``uv run python bench/alpha_memory.py [--mp 40] [--worst]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / "_work" / "alpha"

CHILD = r"""
import json, resource, sys
import numpy as np
sys.path.insert(0, {root!r})
from melanoma_data.ops import decode as dec
from melanoma_data.ops._cv import cv2

def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024

data = open({path!r}, "rb").read()
header = dec.read_header(data)
params = dec.DecodeParams(max_pixels=10**9, max_bytes=10**10)
# a worker's steady state: numba and the cached row kernel are loaded (the hair op uses numba anyway)
ok, tiny = cv2.imencode(".png", np.zeros((4, 4, 4), np.uint16))
dec._png_alpha_streamed(tiny.tobytes(), 0)
base = rss_mb()
if {variant!r} == "strips":  # OpenCV's full decode, then the strip composite in its memory
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    out = dec._composite(arr, 0)
elif {variant!r} == "before":  # the whole-image composite it replaced
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    rgba = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA)
    rgb = rgba[..., :3].astype(np.float32)
    alpha = rgba[..., 3:4].astype(np.float32) / 65535.0
    out = np.clip(np.rint((rgb * alpha + 0 * 257.0 * (1.0 - alpha)) / 257.0), 0, 255).astype(np.uint8)
else:
    out = dec.decode(data, header, 1, params)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
decoded = header.width * header.height * 8 / 2**20
print(json.dumps({{"decoded_mb": decoded, "extra_mb": peak - base, "ratio": (peak - base) / decoded,
                   "shape": list(out.shape)}}))
"""


def make_png(mp: float) -> Path:
    """A 16-bit RGBA PNG of about ``mp`` megapixels with varying transparency (cached)."""
    import numpy as np

    from melanoma_data.ops._cv import cv2

    path = WORK / f"rgba16-{mp:g}mp.png"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    w = int((mp * 1e6 * 1.5) ** 0.5)
    h = int(mp * 1e6 / w)
    tile = np.random.default_rng(0).integers(0, 65536, (256, 256, 4)).astype(np.uint16)
    img = np.tile(tile, (h // 256 + 1, w // 256 + 1, 1))[:h, :w]
    ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def measure(path: Path, variant: str) -> dict:
    code = CHILD.format(root=str(ROOT), path=str(path), variant=variant)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mp", type=float, default=40.0, help="megapixels of the side-by-side image")
    ap.add_argument("--worst", action="store_true", help="also the current decode at max_pixels (150 MP)")
    args = ap.parse_args()
    path = make_png(args.mp)
    print(f"== 16-bit RGBA PNG, {args.mp:g} MP (peak memory beyond the file bytes, x the decoded array)")
    for variant in ("before", "strips", "now"):
        r = measure(path, variant)
        print(f"{variant:7s}: decoded {r['decoded_mb']:.0f} MB, peak +{r['extra_mb']:.0f} MB = {r['ratio']:.2f}x "
              f"(target <= 1.5x)")
    if args.worst:
        from melanoma_data.ops.decode import DecodeParams

        mp = DecodeParams().max_pixels / 1e6
        r = measure(make_png(mp), "now")
        print(f"now at max_pixels ({mp:g} MP): decoded {r['decoded_mb']:.0f} MB, peak +{r['extra_mb']:.0f} MB = "
              f"{r['ratio']:.2f}x")


if __name__ == "__main__":
    main()
