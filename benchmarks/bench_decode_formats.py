"""Peak memory of decoding large uploads of each format the API takes, as the API decodes
them: 8 concurrent ``imaging.decoded_within(..., fit=160)`` under the default decode
budget (48 Mpx), each format in a fresh interpreter so its peak (VmHWM) is its own. Prints
the peak over the RSS before the decodes, and the budget units one upload is charged
(``imaging.decode_cost``; 0 where the code has none, the pixels before it).

    .venv/bin/python benchmarks/bench_decode_formats.py [--uploads 8] [--only NAME,...]

Run it with ``PYTHONPATH`` naming another checkout's ``src`` to measure that code.
"""

from __future__ import annotations

import json
import sys

from bench_decode_memory import run_scenario  # benchmarks/, the script's own folder

# name -> (Pillow mode, width, height, format, save options)
FORMATS = {
    "rgba_png": ("RGBA", 6300, 6300, "PNG", {}),
    "grey_png": ("L", 6300, 6300, "PNG", {}),
    "grey16_png": ("I;16", 6300, 6300, "PNG", {}),
    "baseline_jpeg_24mpx": ("RGB", 6000, 4000, "JPEG", {"quality": 90}),
    "progressive_jpeg_24mpx": ("RGB", 6000, 4000, "JPEG", {"quality": 90, "progressive": True}),
    "progressive_444_jpeg_40mpx": (
        "RGB",
        7300,
        5475,
        "JPEG",
        {"quality": 90, "progressive": True, "subsampling": 0},
    ),
    "int32_tiff": ("I", 6300, 6300, "TIFF", {}),
    "float_tiff": ("F", 6300, 6300, "TIFF", {}),
    "float_tiff_24mpx": ("F", 6000, 4000, "TIFF", {}),
}

SCENARIO = r"""
import io, json, sys, threading
import numpy as np
from PIL import Image
from plants_mlops import imaging
mode, w, h, fmt, opts, n = json.loads(sys.argv[1])
rng = np.random.default_rng(0)
small = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1), dtype=np.uint8)
grey = Image.fromarray(small, "L").resize((w, h), Image.Resampling.BILINEAR)
if mode == "RGB":
    img = Image.merge("RGB", (grey, grey.transpose(Image.Transpose.FLIP_LEFT_RIGHT), grey))
elif mode == "RGBA":
    img = Image.new("RGBA", (w, h), (10, 200, 30, 128))
elif mode == "F":
    img = Image.fromarray(np.asarray(grey, np.float32) / 255.0, "F")
elif mode == "I":
    img = Image.fromarray(np.asarray(grey, np.int32) * 257, "I")
elif mode == "I;16":
    img = Image.fromarray(np.asarray(grey, np.uint16) * 257).convert("I;16")
else:
    img = grey.convert(mode)
buf = io.BytesIO(); img.save(buf, fmt, **opts); data = buf.getvalue()
del img, grey, small, buf
def status_mb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024
imaging.decoded_within(data, None, fit=160).__enter__()  # imports, first-use allocations
import gc; gc.collect()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak (VmHWM) starts again from the RSS now
base = status_mb("VmRSS:")
budget = imaging.DecodeBudget(48_000_000)
codes = []
def work():
    try:
        with imaging.decoded_within(data, budget, fit=160):  # the API's path
            codes.append("ok")
    except imaging.ImageDecodeError as exc:
        codes.append(exc.reason)
threads = [threading.Thread(target=work) for _ in range(n)]
[t.start() for t in threads]; [t.join() for t in threads]
cost = getattr(imaging, "decode_cost", lambda d: 0)(data)
print(json.dumps({"bytes": len(data), "added_mb": round(status_mb("VmHWM:") - base),
                  "charged": cost, "codes": sorted(set(codes))}))
"""


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--uploads", type=int, default=8)
    ap.add_argument("--only", default="", help="comma-separated format names")
    args = ap.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(FORMATS)
    print(f"{'format':<27} {'Mpx':>5} {'file MB':>8} {'charged Mpx':>11} {'peak added MB':>13}")
    for name in names:
        mode, w, h, fmt, opts = FORMATS[name]
        row = run_scenario(SCENARIO, json.dumps([mode, w, h, fmt, opts, args.uploads]))
        print(
            f"{name:<27} {w * h / 1e6:>5.1f} {row['bytes'] / 1e6:>8.1f} "
            f"{row['charged'] / 1e6:>11.1f} {row['added_mb']:>13}  {','.join(row['codes'])}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
