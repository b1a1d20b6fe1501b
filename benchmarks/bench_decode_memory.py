"""Peak memory of decoding hostile uploads: 8 concurrent 6300x6300 RGBA PNGs (about 170 KB
each, under the 40 Mpx limit), with and without the API's decode budget.

Each scenario runs in a fresh interpreter so its peak RSS is its own. Prints one line per
scenario: ``n budget peak_rss_mb added_mb seconds``.
"""

from __future__ import annotations

import json
import subprocess
import sys

SCENARIO = r"""
import io, json, resource, sys, threading, time
from PIL import Image
from plants_mlops import imaging
n, budget = int(sys.argv[1]), sys.argv[2]
img = Image.new("RGBA", (6300, 6300), (10, 200, 30, 128))
buf = io.BytesIO(); img.save(buf, "PNG"); data = buf.getvalue(); del img
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
limit = imaging.DecodeBudget(int(budget)) if budget != "none" else None
def work():
    imaging.square_resize(imaging.decode_image(data, budget=limit).image, 160)
threads = [threading.Thread(target=work) for _ in range(n)]
t0 = time.perf_counter()
[t.start() for t in threads]; [t.join() for t in threads]
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"n": n, "budget": budget, "png_bytes": len(data), "base_mb": round(base),
                  "peak_mb": round(peak), "seconds": round(time.perf_counter() - t0, 2)}))
"""


def main() -> int:
    print(f"{'uploads':>7} {'budget (px)':>12} {'peak RSS MB':>12} {'added MB':>9} {'s':>6}")
    for n, budget in ((1, "none"), (8, "none"), (8, "48000000")):
        out = subprocess.run(
            [sys.executable, "-c", SCENARIO, str(n), budget],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        row = json.loads(out.strip().splitlines()[-1])
        print(
            f"{row['n']:>7} {row['budget']:>12} {row['peak_mb']:>12} "
            f"{row['peak_mb'] - row['base_mb']:>9} {row['seconds']:>6}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
