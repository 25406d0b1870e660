"""How well can any metanet rank a CNN zoo's checkpoints by test accuracy? The label-noise ceiling of Kendall tau.

A checkpoint's label is its accuracy on the zoo's fixed test images (539 digits), a finite sample: the best a
predictor of the checkpoint's *expected* accuracy can reach is tau(expected, measured), below 1. It is estimated
by the bootstrap: resample the test images with replacement, recompute every checkpoint's accuracy, and take
tau(measured, resampled), whose sampling error mimics that of measured against expected. Reported on the test
checkpoints of one benchmark split (as ``bench/metanets.py --split-seed``) and on every checkpoint, with the
split-half tau (two disjoint halves of the test images) beside it. Prints JSON.

``python bench/label_noise.py --zoo bench/out/metanets/zoo_cnn --split-seed 0``
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)  # run as a script, this file's folder would shadow the metanets package

import torch  # noqa: E402
from scipy.stats import kendalltau  # noqa: E402

from metanets import group_split  # noqa: E402
from metanets.zoo import cnn  # noqa: E402
from metanets.zoo.data import digits  # noqa: E402
from metanets.zoo.store import load_member, load_zoo  # noqa: E402


def correctness(zoo: Path, members, data_seed: int, batch: int = 256) -> torch.Tensor:
    """(checkpoints, test images) 0/1 matrix: does each checkpoint classify each test image correctly."""
    _, _, x_test, y_test = digits(data_seed)
    keep = torch.ones(len(x_test), cnn.CHANNELS)
    rows = []
    for a in range(0, len(members), batch):
        chunk = members[a:a + batch]
        theta = torch.stack([torch.cat([sd[k].flatten() for k in cnn.LAYOUT.shapes])
                             for sd in (load_member(zoo, m) for m in chunk)])
        relu = torch.tensor([1.0 if m.meta["hyperparameters"]["activation"] == "relu" else 0.0 for m in chunk])
        with torch.no_grad():
            logits = torch.vmap(cnn.forward, in_dims=(0, None, 0, None))(theta, x_test, relu, keep)
        rows.append((logits.argmax(-1) == y_test).float())
    return torch.cat(rows)


def tau(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(kendalltau(a.numpy(), b.numpy()).statistic)


def ceilings(correct: torch.Tensor, resamples: int, g: torch.Generator) -> dict:
    """Bootstrap and split-half tau for one set of checkpoints (rows of ``correct``)."""
    n = correct.shape[1]
    measured = correct.mean(1)
    boot = [tau(measured, correct[:, torch.randint(n, (n,), generator=g)].mean(1)) for _ in range(resamples)]
    halves = []
    for _ in range(resamples):
        perm = torch.randperm(n, generator=g)
        halves.append(tau(correct[:, perm[:n // 2]].mean(1), correct[:, perm[n // 2:]].mean(1)))
    return {"checkpoints": len(measured), "bootstrap_tau_mean": statistics.mean(boot),
            "bootstrap_tau_std": statistics.stdev(boot), "split_half_tau_mean": statistics.mean(halves),
            "split_half_tau_std": statistics.stdev(halves)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--zoo", default="bench/out/metanets/zoo_cnn", help="a small_cnn_digits zoo folder")
    p.add_argument("--min-epoch", type=int, default=4, help="as bench/metanets.py --cnn-min-epoch")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--resamples", type=int, default=200)
    a = p.parse_args(argv)
    zoo = Path(a.zoo)
    recipe, members = load_zoo(zoo)
    members = [m for m in members if m.labels["epoch"] >= a.min_epoch]
    t0 = time.time()
    correct = correctness(zoo, members, recipe.seed)
    stored = torch.tensor([m.labels["test_accuracy"] for m in members])
    mismatch = float((correct.mean(1) - stored).abs().max())  # the stored labels must be what we recompute
    test = group_split([m.run for m in members], 0.15, 0.15, a.split_seed)[2]
    g = torch.Generator().manual_seed(0)
    out = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                       "torch_threads": torch.get_num_threads()},
           "zoo": str(zoo), "recipe": recipe.to_json(), "min_epoch": a.min_epoch, "test_images": correct.shape[1],
           "max_label_mismatch": mismatch, "split_seed": a.split_seed,
           "test_split": ceilings(correct[test], a.resamples, g), "all": ceilings(correct, a.resamples, g),
           "seconds": time.time() - t0}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
