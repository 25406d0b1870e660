"""Fit, evaluate and apply metanetworks (GMN, UNF, StatNN) on a list of checkpoints with labels.

``train_metanet`` splits by group (training run), standardises weights per tensor / role on the training split,
trains with early stopping on validation loss and reports held-out metrics: Kendall tau and R^2 for
regression, accuracy for classification. Everything needed to reload lives in ``.config`` (JSON) and ``.state_dict()``.
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from .errors import MetanetError
from .models.pooling import AGGREGATIONS, READOUTS
from .splits import group_split
from .symmetry import apply_symmetry, random_symmetry
from .weightspace import Describer, Standardizer, edge_log_rms, float_keys, rms_normalize, signature

KINDS, TARGETS, LOSSES = ("gmn", "unf", "statnn"), ("regression", "classification"), ("mse", "bce")
SCHEDULES, NORMALIZE, STATISTICS = ("constant", "cosine"), ("zoo", "checkpoint"), ("signed_log", "raw")
# integer hyperparameters: (low, high). Highs keep one request from exhausting a worker: model sizes, and augment
# (every permuted copy is held in memory with its features); seeds fit torch.Generator.manual_seed
INTEGER_BOUNDS = {"epochs": (1, 10_000), "batch_size": (1, 4096), "hidden": (1, 1024), "layers": (1, 16),
                  "channels": (1, 128), "augment": (0, 16), "split_seed": (0, 2 ** 63 - 1)}


@dataclass
class TrainConfig:
    """Hyperparameters (the API's ``hyperparameters`` dict); model sizes are per kind where noted."""

    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-5
    patience: int = 30  # epochs without a better validation loss before stopping (the best epoch is kept)
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    hidden: int = 64  # GMN width, UNF/StatNN head width
    layers: int = 3  # GMN blocks, UNF equivariant layers, StatNN hidden layers
    channels: int = 8  # UNF channels
    max_terms: int = 4000  # UNF basis guard (terms over all layers)
    grid: tuple[int, int, int] = (1, 3, 3)  # GMN kernel box (vector-mode graph)
    pool_norm: bool = True  # GMN/UNF: BatchNorm on the pooled invariant features (configs without it: off)
    readout: str = "stats"  # GMN/UNF invariant pooling: "stats", "layer_stats" (GMN: per layer) or "mean" (configs
    # without it: mean); models/pooling.py
    normalize: str = "checkpoint"  # GMN/UNF inputs: "checkpoint" (each tensor over its own RMS, plus its log RMS as a
    # second input feature: weightspace.rms_normalize) or "zoo" (per-tensor standardisation fitted on the training
    # split); configs saved without the field: zoo
    schedule: str = "cosine"  # learning rate: "cosine" (one warmup epoch, then down to 0 at ``epochs``) or "constant"
    aggregation: str = "mean_max"  # GMN messages: "mean_max" (mean and max over a node's edges) or "mean" (configs
    # without the field: mean)
    loss: str = "mse"  # regression: "mse" on standardised labels, or "bce" on labels in [0, 1] (accuracies)
    split_seed: int | None = None  # seed of the train/validation/test split (None: the training seed), so that
    # seeds can vary the initialisation over one fixed split
    statistics: str = "signed_log"  # StatNN inputs: "signed_log" (sign(x) log(1 + |x|) of every statistic, robust to
    # runs whose weights blew up) or "raw" (configs without the field); models/statnn.py
    augment: int = 0  # permuted copies (``random_symmetry``) of every training checkpoint added to the training split
    activations: bool = True  # GMN and UNF: embed the activation function (from the description) of each neuron
    # (GMN node features) or of each tensor's target neurons (UNF input channels); configs without the field: off
    hints: dict | None = None  # passed to ``describe``; a checkpoint's own hints (``checkpoint_hints``) override them

    @classmethod
    def parse(cls, hp: dict | None) -> TrainConfig:
        hp = dict(hp or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(hp) - known)
        if unknown:
            raise MetanetError(f"unknown hyperparameters {unknown} (known: {sorted(known)})")
        cfg = cls(**hp)
        cfg.grid = tuple(cfg.grid)
        for name, (low, high) in INTEGER_BOUNDS.items():
            v = getattr(cfg, name)
            if name == "split_seed" and v is None:
                continue
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise MetanetError(f"hyperparameter {name!r} must be an integer >= {low}, got {v!r}")
            if v > high:
                raise MetanetError(f"hyperparameter {name!r} must be at most {high}, got {v}")
        for name in ("pool_norm", "activations"):
            if not isinstance(getattr(cfg, name), bool):
                raise MetanetError(f"hyperparameter {name!r} must be true or false, got {getattr(cfg, name)!r}")
        for name, choices in (("loss", LOSSES), ("normalize", NORMALIZE), ("aggregation", AGGREGATIONS),
                              ("statistics", STATISTICS), ("schedule", SCHEDULES), ("readout", READOUTS)):
            v = getattr(cfg, name)
            if v not in choices:
                raise MetanetError(f"hyperparameter {name!r} must be one of {list(choices)}, got {v!r}")
        if not (isinstance(cfg.lr, (int, float)) and cfg.lr > 0):
            raise MetanetError(f"hyperparameter 'lr' must be positive, got {cfg.lr!r}")
        return cfg


@dataclass
class TrainedMetanet:
    """A trained (or reloaded) metanetwork: module, JSON config (everything but weights) and held-out metrics."""

    model: nn.Module
    config: dict
    metrics: dict

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}


# ---- featurisation: checkpoints -> model inputs ------------------------------------------------------------------

class _Features:
    """Model inputs for a list of checkpoints, batched by index; built from a config so prediction matches training."""

    def __init__(self, config: dict, checkpoints: list[dict[str, torch.Tensor]], describer: Describer | None = None,
                 hints: list[dict | None] | None = None):
        kind = config["kind"]
        self.kind = kind
        if kind == "statnn":
            from .models.statnn import tensor_statistics

            signed_log = config["train"].get("statistics", "raw") == "signed_log"
            self.x = torch.stack([tensor_statistics(sd, config["keys"], signed_log) for sd in checkpoints]).float()
            return
        describer = describer or Describer(config["train"].get("hints"))
        if config["train"].get("normalize", "zoo") == "checkpoint":
            prepare = rms_normalize
        else:
            std = Standardizer(**config["standardizer"])
            prepare = lambda desc, sd: (std(desc, sd), None)  # noqa: E731
        if kind == "unf":
            from .unf_spec import unf_tensors

            desc = describer(checkpoints[0])
            spec = _spec_entries(config["entries"])
            views, scales = [], []
            for sd in checkpoints:
                values, log_rms = prepare(desc, sd)
                views.append(unf_tensors(spec, values))
                scales.append(log_rms)
            self.x = {}
            for e in spec:
                v = torch.stack([view[e.key] for view in views]).float()[..., None]
                if scales[0] is not None:  # second channel: the tensor's log RMS, broadcast over its entries
                    s = torch.tensor([sc[e.tensor] for sc in scales]).view(-1, *[1] * (v.dim() - 1))
                    v = torch.cat([v, s.expand_as(v)], dim=-1)
                self.x[e.key] = v
            if config["train"].get("activations", False):  # each tensor's function, from each checkpoint's own hints
                from .graph.layout import tensor_activations
                from .models.unf import ACTIVATIONS

                per_desc: dict[int, dict[str, int]] = {}
                rows = []
                for i, sd in enumerate(checkpoints):
                    d = describer(sd, f"checkpoint {i}", hints[i] if hints else None)
                    acts = per_desc.setdefault(id(d), tensor_activations(d))
                    rows.append([acts[e.tensor] for e in spec])
                self.x[ACTIVATIONS] = torch.tensor(rows, dtype=torch.long)
        else:
            from .graph.build import to_graph

            grid = tuple(config["train"]["grid"])
            self.graphs = []
            for i, sd in enumerate(checkpoints):
                desc = describer(sd, f"checkpoint {i}", hints[i] if hints else None)
                values, log_rms = prepare(desc, sd)
                g = to_graph(desc, values, mode="vector", grid=grid)
                g.edge_attr = g.edge_attr.float()
                if log_rms is not None:
                    g.edge_scale = edge_log_rms(desc, log_rms, g.num_edges)
                del g.int_buffers, g.float_buffers, g.mode, g.grid
                self.graphs.append(g)

    def batch(self, idx: list[int], device):
        if self.kind == "gmn":
            from torch_geometric.data import Batch

            return Batch.from_data_list([self.graphs[i] for i in idx]).to(device)
        if self.kind == "unf":
            return {k: v[idx].to(device) for k, v in self.x.items()}
        return self.x[idx].to(device)


def _spec_entries(entries: list[dict]):
    from .unf_spec import UNFEntry

    return [UNFEntry(e["key"], e["tensor"], [tuple(s) for s in e["slices"]], e["shape"], e["symbols"]) for e in entries]


def _build_model(config: dict) -> nn.Module:
    t, out_dim = config["train"], config["out_dim"]
    if config["kind"] == "statnn":
        from .models.statnn import StatNN

        return StatNN(7 * len(config["keys"]), out_dim, hidden=t["hidden"], layers=t["layers"])
    if config["kind"] == "unf":
        from .models.unf import UNF

        return UNF(config["entries"], out_dim, channels=t["channels"], layers=t["layers"], hidden=t["hidden"],
                   max_terms=t["max_terms"], pool_norm=t.get("pool_norm", False), readout=t.get("readout", "mean"),
                   in_channels=_input_features(t), activations=t.get("activations", False))
    from .models.gmn import GMN

    return GMN(out_dim, edge_width=math.prod(t["grid"]), d=t["hidden"], layers=t["layers"],
               pool_norm=t.get("pool_norm", False), readout=t.get("readout", "mean"),
               edge_scale=_input_features(t) == 2, aggregation=t.get("aggregation", "mean"),
               layer_slots=config.get("layer_slots", 1), activations=t.get("activations", False))


def _input_features(train: dict) -> int:
    """Input features per weight: its value, and with ``normalize="checkpoint"`` its tensor's log RMS."""
    return 2 if train.get("normalize", "zoo") == "checkpoint" else 1


def _forward(model, x):
    out = model(x)
    return out[0], out[1]


def _chunks(order: list[int], size: int) -> list[list[int]]:
    """``order`` in batches of ``size``; a last batch of one joins the one before (BatchNorm needs two)."""
    out = [order[a:a + size] for a in range(0, len(order), size)]
    if len(out) > 1 and len(out[-1]) == 1:
        last = out.pop()
        out[-1] = out[-1] + last
    return out


def _recalibrate_batchnorm(model, batches) -> None:
    """Set every BatchNorm's running statistics to its batch statistics averaged over ``batches`` (precise BN).

    The pooled features a BatchNorm standardises move while the metanet learns; running averages lag behind and,
    divided by a small spread between checkpoints, make evaluation outputs far off. Recomputing them from the
    training split with the current weights keeps evaluation consistent with training.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    saved = [(m.momentum, m.training) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
        m.train()
    with torch.no_grad():
        for x in batches:
            model(x)
    for m, (momentum, training) in zip(norms, saved):
        m.momentum = momentum
        m.train(training)


def _lr_factor(schedule: str, warmup: int, total: int) -> Callable[[int], float]:
    """Multiplier of the base learning rate at optimizer step ``t``."""
    if schedule == "constant":
        return lambda t: 1.0

    def cosine(t: int) -> float:
        if t < warmup:
            return (t + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (t - warmup) / max(1, total - warmup))))

    return cosine


def permuted_copies(checkpoints: list[dict[str, torch.Tensor]], idx: list[int], copies: int, describer: Describer,
                    generator: torch.Generator,
                    hints: list[dict | None] | None = None) -> list[dict[str, torch.Tensor]]:
    """``copies`` random hidden permutations of each checkpoint in ``idx`` (same function, other weights), in order."""
    out = []
    for i in idx:
        desc = describer(checkpoints[i], f"checkpoint {i}", hints[i] if hints else None)
        out += [apply_symmetry(desc, checkpoints[i], random_symmetry(desc, generator)) for _ in range(copies)]
    return out


def augment_training_split(checkpoints: list[dict[str, torch.Tensor]], y: torch.Tensor, train_idx: list[int],
                           copies: int, describer: Describer, seed: int, hints: list[dict | None] | None = None):
    """(checkpoints, y, train_idx, hints) with ``copies`` permuted copies of every training checkpoint appended after
    the originals (so validation and test indices still point at originals), added to ``train_idx``; a copy keeps
    its original's per-checkpoint ``hints``."""
    if not copies:
        return checkpoints, y, train_idx, hints
    src = [i for i in train_idx for _ in range(copies)]
    extra = permuted_copies(checkpoints, train_idx, copies, describer, torch.Generator().manual_seed(seed), hints)
    n = len(checkpoints)
    return (checkpoints + extra, torch.cat([y, y[src]]), train_idx + list(range(n, n + len(extra))),
            hints + [hints[i] for i in src] if hints else hints)


# ---- validation of the inputs ------------------------------------------------------------------------------------

def _check_inputs(kind, checkpoints, labels, target, groups, checkpoint_hints=None):
    if kind not in KINDS:
        raise MetanetError(f"unknown metanet kind {kind!r} (known: {list(KINDS)})")
    if target not in TARGETS:
        raise MetanetError(f"unknown target {target!r} (known: {list(TARGETS)})")
    if not checkpoints:
        raise MetanetError("the zoo is empty: no checkpoints to train on")
    if len(labels) != len(checkpoints) or len(groups) != len(checkpoints):
        raise MetanetError(f"{len(checkpoints)} checkpoints but {len(labels)} labels and {len(groups)} groups")
    if checkpoint_hints is not None and len(checkpoint_hints) != len(checkpoints):
        raise MetanetError(f"{len(checkpoints)} checkpoints but {len(checkpoint_hints)} checkpoint hints")
    for i, (sd, y) in enumerate(zip(checkpoints, labels)):
        if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise MetanetError(f"checkpoint {i} is not a non-empty state dict of tensors")
        if y is None or (isinstance(y, float) and math.isnan(y)):
            raise MetanetError(f"checkpoint {i} has no label")
        if target == "regression" and (isinstance(y, bool) or not isinstance(y, (int, float))):
            raise MetanetError(f"regression needs numeric labels; checkpoint {i} has {y!r}")
        bad = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise MetanetError(f"checkpoint {i} has non-finite values in {bad[:3]}")
    if kind in ("unf", "statnn"):
        sigs = {}
        for i, sd in enumerate(checkpoints):
            sigs.setdefault(signature(sd), i)
        if len(sigs) > 1:
            a, b = list(sigs.values())[:2]
            raise MetanetError(f"{kind} needs one architecture, the zoo mixes {len(sigs)} (checkpoints {a} and {b} "
                               f"differ in tensor names or shapes); use gmn for mixed architectures")


# ---- metrics -----------------------------------------------------------------------------------------------------

def regression_metrics(pred: torch.Tensor, true: torch.Tensor) -> dict:
    from scipy.stats import kendalltau

    p, t = pred.double().cpu(), true.double().cpu()
    ss_tot = ((t - t.mean()) ** 2).sum()
    r2 = float(1 - ((t - p) ** 2).sum() / ss_tot) if ss_tot > 0 else float("nan")
    tau = kendalltau(p.numpy(), t.numpy()).statistic if len(t) > 1 else float("nan")
    return {"kendall_tau": float(tau), "r2": r2, "n": len(t)}


def classification_metrics(pred: torch.Tensor, true: torch.Tensor) -> dict:
    return {"accuracy": float((pred.cpu() == true.cpu()).double().mean()), "n": len(true)}


# ---- training ----------------------------------------------------------------------------------------------------

def train_metanet(kind: str, checkpoints: list[dict[str, torch.Tensor]], labels: list, target: str,
                  groups: list[str], hyperparameters: dict | None = None,
                  progress: Callable[[dict], None] | None = None, seed: int = 0,
                  checkpoint_hints: list[dict | None] | None = None) -> TrainedMetanet:
    """Train a ``kind`` metanetwork to predict ``labels`` from ``checkpoints``; splits keep ``groups`` together.

    ``checkpoint_hints``: each checkpoint's own architecture hints (its activation, say), over the ``hints``
    hyperparameter. ``progress`` receives a dict per epoch (epoch, train_loss, val_loss). Raises ``MetanetError``
    on bad input.
    """
    _check_inputs(kind, checkpoints, labels, target, groups, checkpoint_hints)
    cfg = TrainConfig.parse(hyperparameters)
    torch.manual_seed(seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    train_idx, val_idx, test_idx = group_split(groups, cfg.val_fraction, cfg.test_fraction,
                                               seed if cfg.split_seed is None else cfg.split_seed)
    if cfg.pool_norm and kind != "statnn" and len(train_idx) < 2:
        raise MetanetError("pool_norm (BatchNorm over checkpoints) needs at least 2 training checkpoints; "
                           "add checkpoints or set pool_norm to false")
    config = {"kind": kind, "target": target, "seed": seed, "train": asdict(cfg)}
    if target == "regression" and cfg.loss == "bce":
        y_model = torch.tensor([float(v) for v in labels])
        if not ((y_model >= 0) & (y_model <= 1)).all():
            raise MetanetError("loss 'bce' needs labels in [0, 1] (fractions such as accuracies); use loss 'mse'")
        config.update(out_dim=1, label_range=_label_range(y_model, train_idx))
        loss_fn = lambda out, t: nn.functional.binary_cross_entropy_with_logits(out[:, 0], t)  # noqa: E731
    elif target == "regression":
        y = torch.tensor([float(v) for v in labels])
        mean, std = float(y[train_idx].mean()), float(y[train_idx].std(unbiased=False).clamp_min(1e-8))
        config.update(out_dim=1, label_mean=mean, label_std=std, label_range=_label_range(y, train_idx))
        y_model = (y - mean) / std
        loss_fn = lambda out, t: ((out[:, 0] - t) ** 2).mean()  # noqa: E731
    else:
        classes = sorted({v for v in labels}, key=lambda v: (str(type(v)), v))
        if len(classes) < 2:
            raise MetanetError(f"classification needs at least 2 classes, got {classes}")
        config.update(out_dim=len(classes), classes=classes)
        y_model = torch.tensor([classes.index(v) for v in labels])
        loss_fn = nn.functional.cross_entropy

    describer = Describer(cfg.hints)
    n_train = len(train_idx)
    checkpoints, y_model, train_idx, hints = augment_training_split(checkpoints, y_model, train_idx, cfg.augment,
                                                                    describer, seed, checkpoint_hints)
    if kind == "statnn":
        config["keys"] = float_keys(checkpoints[0])
        config["shapes"] = {k: list(checkpoints[0][k].shape) for k in config["keys"]}
    else:
        descs = [describer(sd, f"checkpoint {i}", hints[i] if hints else None) for i, sd in enumerate(checkpoints)]
        if cfg.normalize == "zoo":
            config["standardizer"] = Standardizer.fit([descs[i] for i in train_idx],
                                                      [checkpoints[i] for i in train_idx]).to_json()
        if kind == "unf":
            from .unf_spec import unf_spec

            config["entries"] = [asdict(e) for e in unf_spec(descs[0])]
            config["architecture"] = descs[0].to_json()
        else:
            from .graph.build import kernel_grid

            for i, d in enumerate(descs):
                try:
                    kernel_grid(d, cfg.grid)
                except ValueError as exc:
                    raise MetanetError(f"checkpoint {i}: {exc}; raise hyperparameter 'grid'") from exc
    feats = _Features(config, checkpoints, describer, hints)
    if kind == "gmn" and cfg.readout == "layer_stats":  # one pooling slot per layer of the deepest checkpoint
        config["layer_slots"] = max(len(torch.unique(g.x[:, 1])) for g in feats.graphs)
    model = _build_model(config)
    if kind == "statnn":
        xs = feats.x[train_idx]
        model.mean.copy_(xs.mean(0))
        model.std.copy_(xs.std(0, unbiased=False).clamp_min(1e-6))
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = len(_chunks(train_idx, cfg.batch_size))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_factor(cfg.schedule, steps, cfg.epochs * steps))
    g = torch.Generator().manual_seed(seed)

    def evaluate(idx):
        model.eval()
        outs = []
        with torch.no_grad():
            for a in range(0, len(idx), 256):
                outs.append(_forward(model, feats.batch(idx[a:a + 256], device))[0])
        out = torch.cat(outs)
        return out, float(loss_fn(out, y_model[idx].to(device)))

    best, best_loss, bad_epochs, start, history = None, math.inf, 0, time.time(), []
    for epoch in range(cfg.epochs):
        model.train()
        order = torch.tensor(train_idx)[torch.randperm(len(train_idx), generator=g)].tolist()
        total = 0.0
        for idx in _chunks(order, cfg.batch_size):
            out, _ = _forward(model, feats.batch(idx, device))
            loss = loss_fn(out, y_model[idx].to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        _recalibrate_batchnorm(model, (feats.batch(idx, device) for idx in _chunks(order, 256)))
        _, val_loss = evaluate(val_idx)
        history.append({"epoch": epoch, "train_loss": total / len(order), "val_loss": val_loss})
        if progress:
            progress(history[-1])
        if val_loss < best_loss - 1e-6:
            best, best_loss, bad_epochs = copy.deepcopy(model.state_dict()), val_loss, 0
        else:
            bad_epochs += 1
            if bad_epochs >= cfg.patience:
                break
    model.load_state_dict(best)
    metrics = {"train_seconds": time.time() - start, "epochs": len(history), "best_val_loss": best_loss,
               "split_sizes": {"train": n_train, "val": len(val_idx), "test": len(test_idx)},
               "train_checkpoints_seen": len(train_idx)}
    for name, idx in (("validation", val_idx), ("test", test_idx)):
        out, _ = evaluate(idx)
        pred = _decode(config, out)
        true = torch.tensor([float(labels[i]) for i in idx]) if target == "regression" else y_model[idx]
        metrics[name] = (regression_metrics(pred, true) if target == "regression"
                         else classification_metrics(out.argmax(1).cpu(), true))
    model.cpu()
    return TrainedMetanet(model, config, metrics)


def _label_range(y: torch.Tensor, train_idx: list[int]) -> list[float]:
    """[min, max] of the training labels: regression predictions are clipped to it."""
    return [float(y[train_idx].min()), float(y[train_idx].max())]


def _decode(config: dict, out: torch.Tensor) -> torch.Tensor:
    """Model outputs to label units (regression) or class indices (classification).

    Regression predictions are clipped to the training labels' range (configs saved before ``label_range``: not
    clipped): a checkpoint far outside the zoo (weights that blew up) would otherwise get, say, an accuracy of -3."""
    if config["target"] != "regression":
        return out.argmax(1).cpu()
    if config["train"].get("loss", "mse") == "bce":
        pred = torch.sigmoid(out[:, 0].cpu().double())
    else:
        pred = out[:, 0].cpu().double() * config["label_std"] + config["label_mean"]
    return pred.clamp(*config["label_range"]) if "label_range" in config else pred


def load_metanet(config: dict, state_dict: dict[str, torch.Tensor]) -> TrainedMetanet:
    """Rebuild a trained metanetwork from its JSON config and weights."""
    model = _build_model(config)
    model.load_state_dict(state_dict)
    return TrainedMetanet(model.eval(), config, {})


def compatible(metanet: TrainedMetanet, state_dict: dict[str, torch.Tensor], hints: dict | None = None) -> list[str]:
    """Problems that stop ``metanet`` from taking this checkpoint, described with its own ``hints`` (empty: it can)."""
    cfg = metanet.config
    problems = [f"tensor {k!r} has non-finite values" for k, v in state_dict.items()
                if v.is_floating_point() and not torch.isfinite(v).all()]
    if cfg["kind"] in ("statnn", "unf"):
        if cfg["kind"] == "statnn":
            want = cfg["shapes"]
        else:
            want = {e["tensor"]: t["shape"] for e in cfg["entries"] for t in cfg["architecture"]["tensors"]
                    if t["name"] == e["tensor"]}
        for k, shape in want.items():
            if k not in state_dict:
                problems.append(f"tensor {k!r} is missing (the {cfg['kind']} metanet was trained on another architecture)")
            elif list(state_dict[k].shape) != list(shape):
                problems.append(f"tensor {k!r} has shape {list(state_dict[k].shape)}, the metanet expects {shape}")
        extra = [k for k in state_dict if k not in want and state_dict[k].is_floating_point()
                 and (cfg["kind"] == "unf" or state_dict[k].numel() > 1)]
        if cfg["kind"] == "unf":
            extra = [k for k in extra if k not in {t["name"] for t in cfg["architecture"]["tensors"]}]
        problems += [f"tensor {k!r} is not part of the architecture the metanet was trained on" for k in extra]
        return problems
    try:
        from .graph.build import kernel_grid

        desc = Describer(cfg["train"].get("hints"))(state_dict, hints=hints)
        kernel_grid(desc, tuple(cfg["train"]["grid"]))
    except ValueError as exc:
        problems.append(str(exc))
    return problems


def predict(metanet: TrainedMetanet, checkpoints: list[dict[str, torch.Tensor]], batch_size: int = 256,
            checkpoint_hints: list[dict | None] | None = None):
    """(predictions, embeddings): label values (regression floats or class labels) and readout embeddings.

    ``checkpoint_hints``: each checkpoint's own architecture hints, as given to ``train_metanet``."""
    if not checkpoints:
        raise MetanetError("no checkpoints to predict")
    if checkpoint_hints is not None and len(checkpoint_hints) != len(checkpoints):
        raise MetanetError(f"{len(checkpoints)} checkpoints but {len(checkpoint_hints)} checkpoint hints")
    for i, sd in enumerate(checkpoints):
        problems = compatible(metanet, sd, checkpoint_hints[i] if checkpoint_hints else None)
        if problems:
            raise MetanetError(f"checkpoint {i}: " + "; ".join(problems))
    feats = _Features(metanet.config, checkpoints, hints=checkpoint_hints)
    model = metanet.model.eval()
    device = next(model.parameters()).device
    outs, embs = [], []
    with torch.no_grad():
        for a in range(0, len(checkpoints), batch_size):
            out, emb = _forward(model, feats.batch(list(range(a, min(a + batch_size, len(checkpoints)))), device))
            outs.append(out)
            embs.append(emb.cpu())
    out = torch.cat(outs)
    if metanet.config["target"] == "regression":
        return _decode(metanet.config, out).tolist(), torch.cat(embs)
    return [metanet.config["classes"][i] for i in _decode(metanet.config, out).tolist()], torch.cat(embs)
