"""CLI: ``python -m metanets.zoo small_cnn_digits --size 300 --out zoo/`` (progress bar on stderr, summary on stdout)."""
from __future__ import annotations

import argparse
import json
import sys
import time

from .generate import generate_zoo
from .recipe import KINDS, ZooRecipe
from .summary import label_summary


def _bar(start: float):
    def progress(done: int, total: int) -> None:
        width = 30
        filled = width * done // max(total, 1)
        rate = done / max(time.time() - start, 1e-9)
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} units  {rate:.2f}/s")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()
    return progress


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m metanets.zoo", description=__doc__)
    p.add_argument("kind", choices=KINDS)
    p.add_argument("--size", type=int, required=True, help="training runs (CNN) or digit images (INR)")
    p.add_argument("--out", required=True, help="zoo folder (an unfinished zoo there is resumed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoints", type=int, nargs="+", help="CNN: epochs saved per run")
    p.add_argument("--seeds", type=int, default=3, help="INR: fits per image")
    p.add_argument("--steps", type=int, default=300, help="INR: fitting steps")
    p.add_argument("--shared-init", action="store_true", help="INR: fit s of every image starts from one init")
    p.add_argument("--w0", type=float, default=30.0, help="INR: SIREN w0 (30 * 8 / 28 suits the 8x8 grid)")
    p.add_argument("--resolution", type=int, default=8, help="INR: fit the digits upsampled to this grid")
    p.add_argument("--chunk", type=int, default=64, help="models trained at once")
    p.add_argument("--workers", type=int, default=1, help="processes, each training one chunk")
    a = p.parse_args(argv)
    extra = {"checkpoints": a.checkpoints} if a.checkpoints else {}
    recipe = ZooRecipe(a.kind, a.size, a.seed, seeds=a.seeds, steps=a.steps, chunk=a.chunk,
                       shared_init=a.shared_init, w0=a.w0, resolution=a.resolution, **extra)
    start = time.time()
    members = generate_zoo(recipe, a.out, progress=_bar(start), workers=a.workers)
    print(json.dumps({"out": a.out, "members": len(members), "seconds": round(time.time() - start, 1),
                      "files": [f"{a.out}/labels.json", f"{a.out}/recipe.json", f"{a.out}/members/*.safetensors"],
                      "labels": label_summary(members)}, indent=1))


if __name__ == "__main__":
    main()
