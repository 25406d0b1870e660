"""Zoo generation: fixed chunks of runs, each trained batched, saved, and skipped when resuming; optionally
several chunks in parallel processes."""
from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
import multiprocessing

import torch

from ..errors import MetanetError
from . import cnn, inr
from .data import digit_images
from .recipe import ZooMember, ZooRecipe
from .store import finished_chunk, open_store, save_chunk, write_labels


def _seed(*key: int) -> int:
    """A seed for one unit of randomness, identified by integers (independent of chunking)."""
    seed = 0
    for k in key:
        seed = (seed * 1_000_003 + k) % (2 ** 63)
    return seed


def _gen(*key: int) -> torch.Generator:
    return torch.Generator().manual_seed(_seed(*key))


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _cnn_chunk(recipe: ZooRecipe, k: int, units: range):
    hps = [cnn.sample_hyperparameters(_gen(recipe.seed, 1, i)) for i in units]
    inits = torch.stack([cnn.initial_weights(hp, _gen(recipe.seed, 2, i)) for hp, i in zip(hps, units)])
    items = []
    for epoch, thetas, labels in cnn.train_runs(hps, inits, recipe.checkpoints, seed=_seed(recipe.seed, 3, k),
                                                data_seed=recipe.seed, device=_device()):
        for i, hp, sd, lab in zip(units, hps, cnn.LAYOUT.state_dicts(thetas), labels):
            mid = f"cnn-r{i:05d}-e{epoch:03d}"
            meta = {"architecture": "small_cnn_digits", "hints": cnn.describe_hints(hp["activation"]),
                    "hyperparameters": hp, "epoch": epoch, "dataset": "sklearn digits 8x8"}
            items.append((ZooMember(mid, f"r{i:05d}", f"members/{mid}.safetensors", lab, meta), sd))
    return items


def _inr_chunk(recipe: ZooRecipe, k: int, units: range):
    order, images, digits = digit_images(recipe.seed)
    pairs = [(i, s) for i in units for s in range(recipe.seeds)]
    key = (lambda i, s: (recipe.seed, 5, s)) if recipe.shared_init else (lambda i, s: (recipe.seed, 4, i, s))
    inits = torch.stack([inr.initial_weights(_gen(*key(i, s)), recipe.w0) for i, s in pairs])
    targets = inr.upsample(images[[i for i, _ in pairs]], recipe.resolution)
    thetas, errors = inr.fit(inits, targets, recipe.steps, device=_device(), w0=recipe.w0)
    convention = inr.convention(recipe.w0, recipe.resolution)
    items = []
    for (i, s), sd, err in zip(pairs, inr.LAYOUT.state_dicts(thetas), errors):
        mid = f"inr-i{i:05d}-s{s}"
        meta = {"architecture": "siren_digits", "siren": convention, "image_index": int(order[i]), "seed": s,
                "shared_init": recipe.shared_init}
        labels = {"digit": int(digits[i]), "mse": float(err), "psnr": float(inr.psnr(err))}
        items.append((ZooMember(mid, f"i{i:05d}", f"members/{mid}.safetensors", labels, meta), sd))
    return items


def _run_chunk(recipe: ZooRecipe, out: Path, k: int, units: range) -> list[ZooMember]:
    torch.set_num_threads(1)
    items = (_cnn_chunk if recipe.kind == "small_cnn_digits" else _inr_chunk)(recipe, k, units)
    save_chunk(out, k, units, items)
    return [m for m, _ in items]


def generate_zoo(recipe: ZooRecipe, out_dir: str | Path, progress: Callable[[int, int], None] | None = None,
                 workers: int = 1) -> list[ZooMember]:
    """Generate (or finish) the zoo in ``out_dir``; ``progress(done_units, total_units)`` after each chunk.

    Units are CNN training runs or INR images. Chunks already on disk are reused, so a stopped run resumes.
    Training runs on the GPU when there is one (then bytes match only between runs on the same kind of device).
    """
    if recipe.kind == "siren_digits" and recipe.size > len(digit_images(recipe.seed)[0]):
        raise MetanetError(f"siren_digits has {len(digit_images(recipe.seed)[0])} images, asked for {recipe.size}")
    out = open_store(out_dir, recipe)
    chunks = [range(a, min(a + recipe.chunk, recipe.size)) for a in range(0, recipe.size, recipe.chunk)]
    results: dict[int, list[ZooMember]] = {}
    todo = []
    for k, units in enumerate(chunks):
        done = finished_chunk(out, k, units)
        if done is None:
            todo.append(k)
        else:
            results[k] = done
    count = sum(len(chunks[k]) for k in results)
    if progress:
        progress(count, recipe.size)

    def finish(k, members):
        nonlocal count
        results[k] = members
        count += len(chunks[k])
        write_labels(out, recipe, [m for j in sorted(results) for m in results[j]])
        if progress:
            progress(count, recipe.size)

    if workers > 1 and len(todo) > 1:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            futures = {k: pool.submit(_run_chunk, recipe, out, k, chunks[k]) for k in todo}
            for k, f in futures.items():
                finish(k, f.result())
    else:
        threads = torch.get_num_threads()
        try:
            for k in todo:
                finish(k, _run_chunk(recipe, out, k, chunks[k]))
        finally:
            torch.set_num_threads(threads)
    members = [m for j in sorted(results) for m in results[j]]
    write_labels(out, recipe, members)
    return members
