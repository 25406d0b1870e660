"""Benchmark: StatNN, NFN (the ``nfn`` package, NP layers), GMN and UNF side by side on two zoos built here.

Small-CNN digits zoo (predict test accuracy: Kendall tau, R^2) and SIREN digits INR zoo (classify the digit:
accuracy), each metric as mean and std over metanet seeds, plus training time, inference checkpoints per second
(end to end: featurisation included) and zoo generation throughput. Results are written after every model to
``<out>/results.json`` so an interrupted run keeps what it finished. Recipe: the command-line defaults.
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
from torch import nn  # noqa: E402

from metanets import group_split, load_member, predict, train_metanet  # noqa: E402
from metanets.training import (_chunks, _lr_factor, _recalibrate_batchnorm,  # noqa: E402
                               augment_training_split, classification_metrics,
                               regression_metrics)
from metanets.weightspace import Describer  # noqa: E402
from metanets.zoo import ZooRecipe, generate_zoo  # noqa: E402
from metanets.zoo.summary import label_summary  # noqa: E402


# ---- NFN baseline (the nfn package's NPLinear / NPPool; bench only) ------------------------------------------------

def _nfn_features(sds, stats, codes=None):
    """State dicts (ordered weight, bias, ...) -> nfn WeightSpaceFeatures, prepared as our models' inputs are:
    standardised per tensor with training-split ``stats``, or (``stats`` None: ``normalize="checkpoint"``) each
    tensor over its own RMS with its log RMS as a second channel (``metanets.weightspace.rms_normalize``). With
    ``codes`` (per checkpoint, ``activation_codes``) each tensor gets its activation code as one more channel."""
    from nfn.common import WeightSpaceFeatures

    keys = list(sds[0])
    feats = {}
    for k in keys:
        v = torch.stack([sd[k] for sd in sds]).double()
        if stats is not None:
            feats[k] = ((v - stats[k][0]) / stats[k][1]).float()[:, None]
        else:
            rms = v.flatten(1).pow(2).mean(1).sqrt().view(-1, *[1] * (v.dim() - 1))
            scale = torch.log(rms + 1e-6).expand_as(v)
            feats[k] = torch.stack([v / (rms + 1e-6), scale], 1).float()
        if codes is not None:
            c = torch.tensor([cs[k] for cs in codes]).view(-1, 1, *[1] * (v.dim() - 1))
            feats[k] = torch.cat([feats[k], c.expand(-1, 1, *v.shape[1:])], 1)
    return WeightSpaceFeatures([feats[k] for k in keys[0::2]], [feats[k] for k in keys[1::2]])


ACTIVATION_CODE = {"none": 0.0, "relu": 1.0, "tanh": -1.0}  # the CNN zoo's functions, for --peer-activations


def activation_codes(desc) -> dict[str, float]:
    """Per tensor: the code of the function applied to its target neurons (what UNF embeds; 0: none, the last)."""
    from metanets.graph.layout import tensor_activations
    from metanets.graph.types import ACTIVATION_TYPES

    return {name: ACTIVATION_CODE[ACTIVATION_TYPES[i]] for name, i in tensor_activations(desc).items()}


def with_codes(sds, codes):
    """StatNN's view of the activation: each checkpoint gains one tensor holding its weight tensors' codes."""
    return [{**sd, "activation.codes": torch.tensor([c[k] for k in sd if k.endswith("weight")])}
            for sd, c in zip(sds, codes)]


class NFNModel(nn.Module):
    """NFN_NP (io_embed): NPLinear -> ReLU -> NPLinear -> ReLU -> NPPool -> [BatchNorm] -> MLP.

    ``pool_norm`` standardises the pooled features over checkpoints, as GMN and UNF do with ``pool_norm`` (same
    precise-BN recalibration each epoch), so the comparison is between layers, not between readout tricks.
    """

    def __init__(self, spec, out_dim, in_channels=1, channels=16, hidden=64, pool_norm=True):
        super().__init__()
        from nfn.layers import NPLinear, NPPool, TupleOp

        self.body = nn.Sequential(NPLinear(spec, in_channels, channels, io_embed=True), TupleOp(nn.ReLU()),
                                  NPLinear(spec, channels, channels, io_embed=True), TupleOp(nn.ReLU()), NPPool(spec))
        n = NPPool.get_num_outs(spec) * channels
        self.head = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(n) if pool_norm else nn.Identity(),
                                  nn.Linear(n, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))

    def forward(self, ws):
        return self.head(self.body(ws))


def _split(groups, hp, seed):
    """train_metanet's split: by ``hp["split_seed"]`` when set, else by the seed."""
    split_seed = seed if hp.get("split_seed") is None else hp["split_seed"]
    return group_split(groups, hp.get("val_fraction", 0.15), hp.get("test_fraction", 0.15), split_seed)


def train_nfn(sds, labels, target, groups, hints, hp, seed, codes=None):
    """The same split, label scaling, optimiser and early stopping as ``train_metanet``, for the NFN model."""
    from nfn.common import network_spec_from_wsfeat

    torch.manual_seed(seed)
    tr, va, te = _split(groups, hp, seed)
    stats = None if hp.get("normalize") == "checkpoint" else {}
    for k in sds[0] if stats is not None else []:
        v = torch.stack([sds[i][k] for i in tr]).double()
        stats[k] = (float(v.mean()), float(v.std().clamp_min(1e-8)))
    bce = target == "regression" and hp.get("loss") == "bce"
    if bce:
        yt, out_dim = torch.tensor(labels, dtype=torch.float32), 1
        loss_fn = lambda o, t: nn.functional.binary_cross_entropy_with_logits(o[:, 0], t)  # noqa: E731
    elif target == "regression":
        y = torch.tensor(labels, dtype=torch.float32)
        mu, sd = float(y[tr].mean()), float(y[tr].std())
        yt, out_dim = (y - mu) / sd, 1
        loss_fn = lambda o, t: ((o[:, 0] - t) ** 2).mean()  # noqa: E731
    else:
        classes = sorted(set(labels))
        yt, out_dim = torch.tensor([classes.index(v) for v in labels]), len(classes)
        loss_fn = nn.functional.cross_entropy
    copies = hp.get("augment", 0)
    if codes is not None:  # a permuted copy keeps its original's codes
        codes = codes + [codes[i] for i in tr for _ in range(copies)]
    sds, yt, tr, _ = augment_training_split(sds, yt, tr, copies, Describer(), seed, hints)  # as ours
    spec = network_spec_from_wsfeat(_nfn_features(sds[:1], stats))
    model = NFNModel(spec, out_dim, in_channels=(1 if stats is not None else 2) + (codes is not None),
                     hidden=hp.get("hidden", 64),
                     pool_norm=hp.get("pool_norm", True))
    opt = torch.optim.AdamW(model.parameters(), lr=hp.get("lr", 1e-3), weight_decay=hp.get("weight_decay", 1e-5))
    steps = len(_chunks(tr, hp.get("batch_size", 32)))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_factor(hp.get("schedule", "constant"), steps,
                                                              steps * hp.get("epochs", 100)))
    feats = lambda idx: _nfn_features([sds[i] for i in idx], stats, codes and [codes[i] for i in idx])  # noqa: E731
    g, best, best_loss, bad, start = torch.Generator().manual_seed(seed), None, float("inf"), 0, time.time()
    for _ in range(hp.get("epochs", 100)):
        model.train()
        order = torch.tensor(tr)[torch.randperm(len(tr), generator=g)].tolist()
        for idx in _chunks(order, hp.get("batch_size", 32)):
            loss = loss_fn(model(feats(idx)), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        _recalibrate_batchnorm(model, (feats(idx) for idx in _chunks(order, 256)))
        model.eval()
        with torch.no_grad():
            val = float(loss_fn(model(feats(va)), yt[va]))
        if val < best_loss - 1e-6:
            best, best_loss, bad = {k: v.clone() for k, v in model.state_dict().items()}, val, 0
        else:
            bad += 1
            if bad >= hp.get("patience", 15):
                break
    model.load_state_dict(best)
    train_seconds = time.time() - start
    model.eval()

    def metrics(idx):
        with torch.no_grad():
            out = model(feats(idx))
        if target != "regression":
            return classification_metrics(out.argmax(1), yt[idx])
        pred = torch.sigmoid(out[:, 0].double()) if bce else out[:, 0].double() * sd + mu
        m = regression_metrics(pred, torch.tensor([labels[i] for i in idx]).double())
        m["kendall_tau_above_chance"] = _tau_above_chance(pred, [labels[i] for i in idx])
        return m

    t0 = time.time()
    m = metrics(te)
    infer = len(te) / (time.time() - t0)
    return m, metrics(va), train_seconds, infer


# ---- the run ------------------------------------------------------------------------------------------------------

CHANCE = 0.2  # digits have 10 classes: test accuracy below this is an untrained or dead network


def _tau_above_chance(pred, true) -> float:
    """Kendall tau on the test checkpoints whose true accuracy is above chance level (a diagnostic: below it,
    labels are ties up to test-set noise and every model ranks them at random)."""
    from scipy.stats import kendalltau

    keep = [i for i, t in enumerate(true) if t >= CHANCE]
    return float(kendalltau([float(pred[i]) for i in keep], [true[i] for i in keep]).statistic)


def run_ours(kind, sds, labels, target, groups, hints, hp, seed):
    m = train_metanet(kind, sds, labels, target, groups, hp, seed=seed, checkpoint_hints=hints)
    test_idx = _split(groups, hp, seed)[2]
    t0 = time.time()
    pred, _ = predict(m, [sds[i] for i in test_idx], checkpoint_hints=[hints[i] for i in test_idx] if hints else None)
    infer = len(test_idx) / (time.time() - t0)
    metrics = dict(m.metrics["test"])
    if target == "regression":
        metrics["kendall_tau_above_chance"] = _tau_above_chance(pred, [labels[i] for i in test_idx])
    return metrics, m.metrics["validation"], m.metrics["train_seconds"], infer


def _zoo(recipe, out, workers):
    t0 = time.time()
    members = generate_zoo(recipe, out, workers=workers)
    seconds = time.time() - t0
    return members, [load_member(out, m) for m in members], seconds


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--cnn-runs", type=int, default=500, help="CNN training runs, 7 checkpoints each (epochs 0-18)")
    p.add_argument("--cnn-min-epoch", type=int, default=4,
                   help="keep checkpoints from this epoch on (default: 500 runs x epochs 4, 8, 12, 18 = 2,000); "
                        "earlier ones are mostly at chance, where every model ranks at random")
    p.add_argument("--inr-images", type=int, default=500, help="x --inr-seeds fits = 1,000 INRs (of 1,797 images)")
    p.add_argument("--inr-seeds", type=int, default=2, help="INR fits per image (all on one side of the split)")
    p.add_argument("--inr-w0", type=float, default=30 * 8 / 28,
                   help="SIREN w0: DWSNets' 30 for 28x28, scaled to the 8x8 grid (30 * 8 / 28)")
    p.add_argument("--inr-resolution", type=int, default=8, help="digits upsampled (bilinear) to this grid")
    p.add_argument("--inr-steps", type=int, default=300, help="INR fitting steps")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--models", nargs="+", default=["statnn", "nfn", "unf", "gmn"])
    p.add_argument("--tasks", nargs="+", default=["cnn", "inr"])
    p.add_argument("--inr-shared-init", action="store_true", help="INR fits of one seed share their initialisation")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--patience", type=int, default=30, help="early stopping; the best validation epoch is kept")
    p.add_argument("--schedule", choices=["cosine", "constant"], default="cosine", help="learning rate, every model")
    p.add_argument("--normalize", choices=["checkpoint", "zoo"], default="checkpoint",
                   help="GMN, UNF and NFN inputs: per-checkpoint RMS plus log RMS, or zoo-wide standardisation")
    p.add_argument("--no-pool-norm", action="store_true",
                   help="no BatchNorm on the pooled invariant features (GMN, UNF, NFN): the behaviour before")
    p.add_argument("--channels", type=int, default=8, help="UNF channels (the NFN peer always has 16)")
    p.add_argument("--gmn-hidden", type=int, default=32, help="GMN node and edge width (other models: hidden 32)")
    p.add_argument("--readout", choices=["mean", "stats", "layer_stats"], default="stats",
                   help="GMN and UNF invariant pooling (layer_stats: GMN per layer; UNF pools per tensor anyway)")
    p.add_argument("--loss", choices=["mse", "bce"], default="mse",
                   help="CNN accuracy regression loss, every model (bce: as in the GMN and UNF papers)")
    p.add_argument("--statistics", choices=["signed_log", "raw"], default="signed_log",
                   help="StatNN inputs: signed log of the statistics, or raw (the behaviour before)")
    p.add_argument("--augment", type=int, default=0,
                   help="permuted copies of every training checkpoint (every model; all four are invariant)")
    p.add_argument("--no-activations", action="store_true",
                   help="GMN and UNF without activation features (the behaviour before); the peers read none "
                        "unless --peer-activations")
    p.add_argument("--peer-activations", action="store_true",
                   help="control: NFN (an input channel per tensor) and StatNN (one more tensor) also read each "
                        "checkpoint's activation, code +1 relu / -1 tanh / 0 none, as GMN and UNF do by default")
    p.add_argument("--split-seed", type=int, default=None,
                   help="one split for every seed (seeds then vary only the initialisation); default: split by seed")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workers", type=int, default=1, help="zoo generation processes")
    p.add_argument("--out", default="bench/out/metanets")
    a = p.parse_args(argv)
    if a.peer_activations and a.augment:
        p.error("--peer-activations takes --augment 0 (StatNN's extra tensor is not part of any architecture)")
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    hp = {"epochs": a.epochs, "patience": a.patience, "hidden": 32, "channels": a.channels, "weight_decay": 0.01,
          "val_fraction": 0.15, "test_fraction": 0.15, "pool_norm": not a.no_pool_norm, "readout": a.readout,
          "schedule": a.schedule, "normalize": a.normalize, "augment": a.augment, "split_seed": a.split_seed,
          "statistics": a.statistics, "activations": not a.no_activations}
    results = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                           "torch_threads": a.threads, "cuda": torch.cuda.is_available(),
                           "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"},
               "args": vars(a), "hyperparameters": hp, "zoos": {}, "runs": []}
    save = lambda: (out / "results.json").write_text(json.dumps(results, indent=1))  # noqa: E731
    tasks = {}
    for name, recipe, label, target in (
            ("cnn", ZooRecipe("small_cnn_digits", a.cnn_runs, seed=0), "test_accuracy", "regression"),
            ("inr", ZooRecipe("siren_digits", a.inr_images, seed=0, seeds=a.inr_seeds, steps=a.inr_steps,
                              shared_init=a.inr_shared_init, w0=a.inr_w0, resolution=a.inr_resolution), "digit",
             "classification")):
        if name not in a.tasks:
            continue
        members, sds, seconds = _zoo(recipe, out / f"zoo_{name}", a.workers)
        results["zoos"][name] = {"recipe": recipe.to_json(), "members": len(members), "seconds": seconds,
                                 "models_per_second": len(members) / seconds}
        if name == "cnn":
            keep = [i for i, m in enumerate(members) if m.labels["epoch"] >= a.cnn_min_epoch]
            members, sds = [members[i] for i in keep], [sds[i] for i in keep]
            results["zoos"][name]["used"] = {"members": len(members), "min_epoch": a.cnn_min_epoch}
        results["zoos"][name]["labels"] = label_summary(members)
        save()
        print(name, "zoo", len(members), f"{seconds:.1f}s", flush=True)
        hints = [m.meta.get("hints") for m in members]  # per checkpoint: the CNN zoo mixes relu and tanh runs
        hints = hints if any(hints) else None
        codes = None
        if a.peer_activations:
            describer = Describer()
            codes = [activation_codes(describer(sd, hints=h)) for sd, h in zip(sds, hints or [None] * len(sds))]
        tasks[name] = (sds, [m.labels[label] for m in members], target, [m.run for m in members], hints, codes)
    for seed in a.seeds:
        for name, (sds, labels, target, groups, hints, codes) in tasks.items():
            for kind in a.models:
                task_hp = {**hp, "loss": a.loss} if target == "regression" else hp
                if kind == "gmn":
                    task_hp = {**task_hp, "hidden": a.gmn_hidden}
                if kind == "nfn":
                    metrics, validation, train_s, infer = train_nfn(sds, labels, target, groups, hints, task_hp, seed,
                                                                    codes)
                else:
                    peer_view = codes is not None and kind == "statnn"
                    metrics, validation, train_s, infer = run_ours(kind, with_codes(sds, codes) if peer_view else sds,
                                                                   labels, target, groups, hints, task_hp, seed)
                results["runs"].append({"task": name, "model": kind, "seed": seed, "test": metrics,
                                        "validation": validation, "train_seconds": train_s,
                                        "inference_checkpoints_per_second": infer})
                save()
                print(name, kind, seed, metrics, f"train {train_s:.0f}s infer {infer:.0f}/s", flush=True)
    results["summary"] = summarise(results["runs"])
    save()
    print(json.dumps(results["summary"], indent=1))


def summarise(runs):
    out = {}
    for r in runs:
        key = f"{r['task']}/{r['model']}"
        metric = "kendall_tau" if r["task"] == "cnn" else "accuracy"
        out.setdefault(key, {"metric": metric, "values": [], "validation_values": [], "train_seconds": [],
                             "inference_per_second": []})
        out[key]["values"].append(r["test"][metric])
        out[key]["validation_values"].append(r["validation"][metric])
        if "kendall_tau_above_chance" in r["test"]:
            out[key].setdefault("above_chance_values", []).append(r["test"]["kendall_tau_above_chance"])
        out[key]["train_seconds"].append(r["train_seconds"])
        out[key]["inference_per_second"].append(r["inference_checkpoints_per_second"])
    for v in out.values():
        v["mean"] = statistics.mean(v["values"])
        v["std"] = statistics.stdev(v["values"]) if len(v["values"]) > 1 else 0.0
        v["validation_mean"] = statistics.mean(v["validation_values"])
        if "above_chance_values" in v:
            v["above_chance_mean"] = statistics.mean(v["above_chance_values"])
    return out


if __name__ == "__main__":
    main()
