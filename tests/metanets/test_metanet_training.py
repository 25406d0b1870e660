"""On a tiny seeded zoo built here, every metanet ranks held-out checkpoints well (Kendall tau > 0.5), and a
trained metanet reloads, predicts and checks compatibility; bad input raises MetanetError."""
import json
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from metanets import (MetanetError, apply_symmetry, compatible, describe, group_split, load_metanet, predict,
                      random_symmetry, train_metanet)
from metanets.models.statnn import tensor_statistics
from metanets.training import INTEGER_BOUNDS, TrainConfig, _Features
from metanets.weightspace import rms_normalize
from metanets.zoo import ZooRecipe, generate_zoo, load_member

HP = {"epochs": 25, "patience": 30, "hidden": 32, "channels": 4, "weight_decay": 0.01, "val_fraction": 0.2,
      "test_fraction": 0.3}


@pytest.fixture(scope="module")
def zoo_members(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("zoo")
    return out, generate_zoo(ZooRecipe("small_cnn_digits", size=64, seed=0, checkpoints=[1, 2, 4], chunk=32), out)


@pytest.fixture(scope="module")
def zoo(zoo_members):
    out, members = zoo_members
    return [load_member(out, m) for m in members], [m.labels["test_accuracy"] for m in members], [m.run for m in members]


@pytest.fixture(scope="module")
def zoo_hints(zoo_members):
    """Each member's own hints: its run's activation, relu or tanh."""
    return [m.meta["hints"] for m in zoo_members[1]]


def _pooled_width(metanet) -> int:
    """Width of the pooled invariant features: the pool_norm BatchNorm's."""
    return next(x for x in metanet.model.modules() if isinstance(x, torch.nn.BatchNorm1d)).num_features


@pytest.fixture(scope="module")
def trained(zoo, zoo_hints):
    sds, y, groups = zoo
    return {kind: train_metanet(kind, sds, y, "regression", groups, HP, seed=0, checkpoint_hints=zoo_hints)
            for kind in ("statnn", "unf", "gmn")}


@pytest.mark.parametrize("kind", ["statnn", "unf", "gmn"])
def test_ranks_held_out_checkpoints(trained, kind):
    m = trained[kind]
    assert m.metrics["split_sizes"]["test"] >= 50
    assert m.metrics["test"]["kendall_tau"] > 0.5, m.metrics


@pytest.mark.parametrize("kind", ["statnn", "unf", "gmn"])
def test_reload_predict_and_compatible(trained, zoo, kind):
    sds, y, _ = zoo
    m = trained[kind]
    config = json.loads(json.dumps(m.config))
    again = load_metanet(config, m.state_dict())
    pred, emb = predict(m, sds[:5])
    pred2, emb2 = predict(again, sds[:5])
    assert pred == pred2 and torch.equal(emb, emb2) and len(pred) == 5 and emb.shape[0] == 5
    assert compatible(m, sds[0]) == []
    wider = {k: v for k, v in sds[0].items()}
    wider["8.weight"], wider["8.bias"] = torch.zeros(12, 16), torch.zeros(12)
    broken = {k: v for k, v in sds[0].items() if k != "4.bias"}
    if kind == "gmn":  # any describable architecture is fine; a kernel larger than the grid is not
        assert compatible(m, wider) == [] and len(predict(m, [wider, sds[0]])[0]) == 2
        big = dict(sds[0], **{"0.weight": torch.zeros(16, 1, 5, 5)})
        assert compatible(m, big) and "grid" in compatible(m, big)[0]
    else:
        assert any("8.weight" in p for p in compatible(m, wider))
        assert any("4.bias" in p for p in compatible(m, broken))
        with pytest.raises(MetanetError, match="4.bias"):
            predict(m, [broken])
    nan = dict(sds[0], **{"2.weight": torch.full((16, 16, 3, 3), float("nan"))})
    assert any("non-finite" in p for p in compatible(m, nan))


def test_classification_metrics(zoo):
    sds, y, groups = zoo
    labels = ["good" if v > 0.5 else "bad" for v in y]
    m = train_metanet("statnn", sds, labels, "classification", groups, {"epochs": 10}, seed=1)
    assert set(m.metrics["test"]) == {"accuracy", "n"} and m.config["classes"] == ["bad", "good"]
    pred, _ = predict(m, sds[:3])
    assert set(pred) <= {"good", "bad"}


def test_bad_input(zoo):
    sds, y, groups = zoo
    mlp = {"0.weight": torch.randn(4, 3), "0.bias": torch.randn(4), "2.weight": torch.randn(2, 4), "2.bias": torch.randn(2)}
    for kind in ("unf", "statnn"):
        with pytest.raises(MetanetError, match="one architecture"):
            train_metanet(kind, sds[:9] + [mlp], y[:10], "regression", groups[:10])
    with pytest.raises(MetanetError, match="empty"):
        train_metanet("gmn", [], [], "regression", [])
    with pytest.raises(MetanetError, match="no label"):
        train_metanet("unf", sds[:10], y[:9] + [None], "regression", groups[:10])
    with pytest.raises(MetanetError, match="numeric"):
        train_metanet("unf", sds[:10], y[:9] + ["high"], "regression", groups[:10])
    with pytest.raises(MetanetError, match="labels"):
        train_metanet("statnn", sds[:10], y[:8], "regression", groups[:10])
    with pytest.raises(MetanetError, match="unknown hyperparameters"):
        train_metanet("statnn", sds[:10], y[:10], "regression", groups[:10], {"epoch": 3})
    with pytest.raises(MetanetError, match="pool_norm"):
        train_metanet("gmn", sds[:10], y[:10], "regression", groups[:10], {"pool_norm": "yes"})
    with pytest.raises(MetanetError, match="readout"):
        train_metanet("unf", sds[:10], y[:10], "regression", groups[:10], {"readout": "sum"})
    with pytest.raises(MetanetError, match="normalize"):
        train_metanet("unf", sds[:10], y[:10], "regression", groups[:10], {"normalize": "global"})
    with pytest.raises(MetanetError, match="aggregation"):
        train_metanet("gmn", sds[:10], y[:10], "regression", groups[:10], {"aggregation": "sum"})
    with pytest.raises(MetanetError, match="schedule"):
        train_metanet("gmn", sds[:10], y[:10], "regression", groups[:10], {"schedule": "step"})
    with pytest.raises(MetanetError, match="loss"):
        train_metanet("gmn", sds[:10], y[:10], "regression", groups[:10], {"loss": "l1"})
    with pytest.raises(MetanetError, match=r"bce.*\[0, 1\]"):
        train_metanet("statnn", sds[:10], [v * 100 for v in y[:10]], "regression", groups[:10], {"loss": "bce"})
    with pytest.raises(MetanetError, match="unknown metanet kind"):
        train_metanet("nfn", sds[:10], y[:10], "regression", groups[:10])
    with pytest.raises(MetanetError, match="groups"):
        train_metanet("statnn", sds[:6], y[:6], "regression", ["r0"] * 6)
    with pytest.raises(MetanetError, match="10 checkpoints but 9 checkpoint hints"):
        train_metanet("gmn", sds[:10], y[:10], "regression", groups[:10], checkpoint_hints=[None] * 9)
    with pytest.raises(MetanetError, match="activations"):
        train_metanet("gmn", sds[:10], y[:10], "regression", groups[:10], {"activations": 1})
    with pytest.raises(MetanetError, match="checkpoint 3: hint 'activation'"):
        train_metanet("gmn", sds[:10], y[:10], "regression", groups[:10],
                      checkpoint_hints=[None] * 3 + [{"activation": "sine"}] + [None] * 6)
    assert issubclass(MetanetError, ValueError)


@pytest.mark.parametrize("kind", ["unf", "gmn"])
def test_pool_norm_off_and_configs_saved_before_it(zoo, kind):
    """pool_norm false builds no BatchNorm; a config saved before the field existed loads as pool_norm off."""
    sds, y, groups = zoo
    m = train_metanet(kind, sds, y, "regression", groups, {**HP, "epochs": 1, "pool_norm": False}, seed=0)
    assert not any(isinstance(x, torch.nn.BatchNorm1d) for x in m.model.modules())
    config = json.loads(json.dumps(m.config))
    del config["train"]["pool_norm"]
    old = load_metanet(config, m.state_dict())
    assert predict(old, sds[:4])[0] == predict(m, sds[:4])[0]
    on = train_metanet(kind, sds, y, "regression", groups, {**HP, "epochs": 1}, seed=0)
    assert on.config["train"]["pool_norm"] is True
    assert sum(isinstance(x, torch.nn.BatchNorm1d) for x in on.model.modules()) == 1


@pytest.mark.parametrize("kind", ["unf", "gmn"])
def test_mean_readout_and_configs_saved_before_readout(zoo, kind):
    """readout "mean" pools only the last layer; a config saved before the field existed loads as "mean"."""
    sds, y, groups = zoo
    m = train_metanet(kind, sds, y, "regression", groups, {**HP, "epochs": 1, "readout": "mean"}, seed=0)
    stats = train_metanet(kind, sds, y, "regression", groups, {**HP, "epochs": 1}, seed=0)
    assert stats.config["train"]["readout"] == "stats"
    assert _pooled_width(stats) > _pooled_width(m)
    config = json.loads(json.dumps(m.config))
    del config["train"]["readout"]
    old = load_metanet(config, m.state_dict())
    assert predict(old, sds[:4])[0] == predict(m, sds[:4])[0]


def test_gmn_layer_stats_readout(zoo):
    """readout "layer_stats" stores one pooling slot per layer of the zoo's CNNs (input, 3 convs, dense = 5),
    pools 5 times the stats width, ranks held-out checkpoints and reloads to the same predictions."""
    sds, y, groups = zoo
    m = train_metanet("gmn", sds, y, "regression", groups, {**HP, "readout": "layer_stats"}, seed=0)
    stats = train_metanet("gmn", sds, y, "regression", groups, {**HP, "epochs": 1}, seed=0)
    assert m.config["layer_slots"] == 5 and m.metrics["test"]["kendall_tau"] > 0.5, m.metrics
    assert _pooled_width(m) == 5 * _pooled_width(stats) and "layer_slots" not in stats.config
    again = load_metanet(json.loads(json.dumps(m.config)), m.state_dict())
    assert predict(again, sds[:6])[0] == predict(m, sds[:6])[0]


def test_statnn_reads_signed_log_statistics(trained, zoo):
    """StatNN standardises sign(x) log(1 + |x|) of its statistics: on checkpoints whose biases blew up 100-fold its
    predictions leave the label range far less than with raw statistics (configs saved before the field)."""
    sds, y, groups = zoo
    m = trained["statnn"]
    assert m.config["train"]["statistics"] == "signed_log"
    raw = tensor_statistics(sds[0], m.config["keys"], signed_log=False)
    assert torch.equal(tensor_statistics(sds[0], m.config["keys"]), torch.sign(raw) * torch.log1p(raw.abs()))
    raw_m = train_metanet("statnn", sds, y, "regression", groups, {**HP, "statistics": "raw"}, seed=0)
    exploded = [{k: v * 100 if k.endswith("bias") else v for k, v in sd.items()} for sd in sds[:5]]
    excursion = lambda net: max(abs(p - 0.5) for p in predict(_unclipped(net), exploded)[0])  # noqa: E731
    assert 10 * excursion(m) < excursion(raw_m)
    old = json.loads(json.dumps(raw_m.config))
    del old["train"]["statistics"]
    assert torch.equal(_Features(old, sds[:1]).x[0], raw.float())
    assert predict(load_metanet(old, raw_m.state_dict()), sds[:4])[0] == predict(raw_m, sds[:4])[0]


def _unclipped(metanet):
    """The same metanet loaded from a config saved before ``label_range`` (predictions not clipped)."""
    config = json.loads(json.dumps(metanet.config))
    del config["label_range"]
    return load_metanet(config, metanet.state_dict())


@pytest.mark.parametrize("kind", ["statnn", "unf", "gmn"])
def test_regression_predictions_stay_in_the_training_label_range(trained, zoo, kind):
    """Checkpoints far outside the zoo (biases blown up 1000-fold) get predictions clipped to the training labels'
    [min, max]; predictions inside it are left as they were, and configs saved before the field are not clipped."""
    sds, y, groups = zoo
    m = trained[kind]
    held_out = _held_out(m, groups)
    train = [label for label, run in zip(y, groups) if run not in held_out]
    lo, hi = m.config["label_range"]
    assert (lo, hi) == (min(train), max(train))
    exploded = [{k: v * 1000 if k.endswith("bias") else v for k, v in sd.items()} for sd in sds[:8]]
    raw, clipped = predict(_unclipped(m), exploded)[0], predict(m, exploded)[0]
    if kind != "gmn":  # GMN's layer norms keep even these inside the range; StatNN and UNF extrapolate
        assert any(not lo <= p <= hi for p in raw), raw
    assert clipped == [min(max(p, lo), hi) for p in raw]
    assert predict(m, sds[:8])[0] == [min(max(p, lo), hi) for p in predict(_unclipped(m), sds[:8])[0]]


def _held_out(metanet, groups) -> set:
    """Runs in the validation and test splits of ``metanet``'s training."""
    cfg = metanet.config["train"]
    seed = metanet.config["seed"] if cfg["split_seed"] is None else cfg["split_seed"]
    _, va, te = group_split(groups, cfg["val_fraction"], cfg["test_fraction"], seed)
    return {groups[i] for i in va + te}


def test_bce_loss_predicts_fractions(zoo):
    """loss "bce" (labels in [0, 1]) decodes through a sigmoid and still ranks held-out checkpoints."""
    sds, y, groups = zoo
    m = train_metanet("statnn", sds, y, "regression", groups, {**HP, "loss": "bce"}, seed=0)
    assert m.metrics["test"]["kendall_tau"] > 0.5, m.metrics
    pred, _ = predict(m, sds)
    assert all(0.0 < p < 1.0 for p in pred) and "label_mean" not in m.config


def test_batchnorm_batches_never_hold_one_checkpoint():
    from metanets.training import _chunks

    assert _chunks(list(range(65)), 32) == [list(range(32)), list(range(32, 65))]
    assert _chunks(list(range(64)), 32) == [list(range(32)), list(range(32, 64))]
    assert _chunks([7], 32) == [[7]]


def test_precise_batchnorm_statistics():
    """After recalibration the running statistics are the batch statistics averaged over all batches."""
    from metanets.training import _recalibrate_batchnorm

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)).eval()
    xs = [torch.randn(10, 3) * 5 + 2, torch.randn(7, 3) * 5 + 2]
    _recalibrate_batchnorm(model, xs)
    with torch.no_grad():
        h = model[0](torch.cat(xs))
    bn = model[1]
    assert not bn.training and bn.momentum == 0.1
    torch.testing.assert_close(bn.running_mean, (h[:10].mean(0) + h[10:].mean(0)) / 2, rtol=1e-5, atol=1e-5)
    var = (h[:10].var(0) + h[10:].var(0)) / 2
    torch.testing.assert_close(bn.running_var, var, rtol=1e-5, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), log_scales=st.lists(st.floats(-3, 3), min_size=8, max_size=8))
def test_rms_normalize_separates_shape_from_scale(seed, log_scales):
    """Each tensor comes out with unit RMS; scaling a tensor by c leaves its values and moves its log RMS by log c
    (to within eps / RMS, with eps = 1e-6)."""
    from metanets.zoo import cnn

    torch.manual_seed(seed % 1000)
    sd = {k: v.double() for k, v in cnn.small_cnn("relu").state_dict().items()}
    desc = describe(sd, cnn.describe_hints("relu"))
    values, log_rms = rms_normalize(desc, sd)
    scaled = {k: v * math.exp(c) for (k, v), c in zip(sd.items(), log_scales)}
    values2, log_rms2 = rms_normalize(desc, scaled)
    for (k, v), c in zip(sd.items(), log_scales):
        assert abs(float(values[k].pow(2).mean().sqrt()) - 1) < 1e-4
        torch.testing.assert_close(values2[k], values[k], rtol=1e-3, atol=1e-3)  # up to eps / RMS
        assert log_rms2[k] == pytest.approx(log_rms[k] + c, abs=1e-3)


@pytest.mark.parametrize("kind", ["unf", "gmn"])
def test_checkpoint_normalisation_keeps_predictions_invariant(zoo, kind):
    """Per-checkpoint RMS inputs (the default) are functions of the weights that every hidden permutation keeps."""
    sds, y, groups = zoo
    m = train_metanet(kind, sds, y, "regression", groups, {**HP, "epochs": 2}, seed=0)
    assert m.config["train"]["normalize"] == "checkpoint"
    g = torch.Generator().manual_seed(3)
    permuted = []
    for sd in sds[:6]:
        desc = describe(sd)
        permuted.append(apply_symmetry(desc, sd, random_symmetry(desc, g)))
    assert any(not torch.equal(a["2.weight"], b["2.weight"]) for a, b in zip(sds, permuted))
    before, emb = predict(m, sds[:6])
    after, emb2 = predict(m, permuted)
    assert before == pytest.approx(after, rel=1e-4, abs=1e-5)
    torch.testing.assert_close(emb, emb2, rtol=1e-3, atol=1e-3)  # float32 sums in another order


@pytest.mark.parametrize("kind", ["unf", "gmn"])
def test_zoo_normalisation_and_configs_saved_before_normalize(zoo, kind):
    """normalize "zoo" feeds one feature per weight; a config saved before the field existed loads as "zoo" (and,
    for GMN, before ``aggregation`` existed as "mean")."""
    sds, y, groups = zoo
    old_fields = {"normalize": "zoo", **({"aggregation": "mean"} if kind == "gmn" else {})}
    m = train_metanet(kind, sds, y, "regression", groups, {**HP, "epochs": 1, **old_fields}, seed=0)
    ck = train_metanet(kind, sds, y, "regression", groups, {**HP, "epochs": 1}, seed=0)
    assert "standardizer" in m.config and "standardizer" not in ck.config
    params = lambda t: sum(p.numel() for p in t.model.parameters())  # noqa: E731
    assert params(ck) > params(m)  # the log-RMS input feature
    if kind == "gmn":  # mean + max messages widen phi_v's input: the hyperparameter reaches the model
        mean_only = train_metanet(kind, sds, y, "regression", groups, {**HP, "epochs": 1, "aggregation": "mean"})
        assert params(ck) > params(mean_only)
        assert params(load_metanet(json.loads(json.dumps(ck.config)), ck.state_dict())) == params(ck)
    config = json.loads(json.dumps(m.config))
    for field in old_fields:
        del config["train"][field]
    old = load_metanet(config, m.state_dict())
    assert predict(old, sds[:4])[0] == predict(m, sds[:4])[0]


def test_cosine_schedule():
    """One warmup epoch up to the base rate, then down to 0 at the last step; "constant" stays at the base rate."""
    from metanets.training import _lr_factor

    f = _lr_factor("cosine", 4, 20)
    rates = [f(t) for t in range(21)]
    assert rates[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(rates[3:], rates[4:])) and rates[20] == pytest.approx(0.0)
    assert rates[12] == pytest.approx(0.5)
    assert {_lr_factor("constant", 4, 20)(t) for t in range(21)} == {1.0}


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1))
def test_permuted_copies_compute_the_same_function(zoo, seed):
    """Augmentation copies are other weights for the same network: same outputs on real digits, changed tensors."""
    from metanets import rebuild
    from metanets.training import permuted_copies
    from metanets.weightspace import Describer
    from metanets.zoo.data import digits

    sds, _, _ = zoo
    x = digits(0)[0][:32].view(-1, 1, 8, 8)
    describer = Describer()
    copies = permuted_copies(sds, [0, 5], 2, describer, torch.Generator().manual_seed(seed))
    assert len(copies) == 4
    for c, i in zip(copies, [0, 0, 5, 5]):
        assert c.keys() == sds[i].keys() and any(not torch.equal(c[k], sds[i][k]) for k in c)
        desc = describer(sds[i])
        torch.testing.assert_close(rebuild(desc, c)(x), rebuild(desc, sds[i])(x), atol=1e-5, rtol=1e-5)
    assert any(not torch.equal(copies[0][k], copies[1][k]) for k in copies[0])  # each copy draws its own symmetry


@pytest.mark.parametrize("kind", ["statnn", "unf", "gmn"])
def test_augment_adds_permuted_training_copies(zoo, kind):
    """``augment`` k: the training split is seen as (k + 1) times its checkpoints; validation and test are untouched
    and the setting is saved with the metanet."""
    sds, y, groups = zoo
    plain = train_metanet(kind, sds, y, "regression", groups, {**HP, "epochs": 2}, seed=0)
    aug = train_metanet(kind, sds, y, "regression", groups, {**HP, "epochs": 2, "augment": 2}, seed=0)
    n = plain.metrics["split_sizes"]["train"]
    assert aug.metrics["split_sizes"] == plain.metrics["split_sizes"]
    assert plain.metrics["train_checkpoints_seen"] == n and aug.metrics["train_checkpoints_seen"] == 3 * n
    assert aug.config["train"]["augment"] == 2 and plain.config["train"]["augment"] == 0
    assert aug.metrics["test"]["n"] == plain.metrics["test"]["n"]
    again = load_metanet(json.loads(json.dumps(aug.config)), aug.state_dict())
    assert predict(again, sds[:3])[0] == predict(aug, sds[:3])[0]
    for bad in (-1, 1.5, True, 17):
        with pytest.raises(MetanetError, match="augment"):
            train_metanet(kind, sds, y, "regression", groups, {**HP, "augment": bad})


@pytest.mark.parametrize("name", sorted(INTEGER_BOUNDS))
def test_integer_hyperparameters_are_bounded(name):
    """Each integer hyperparameter parses at both bounds and is refused one step outside, naming the bound."""
    low, high = INTEGER_BOUNDS[name]
    for bound in (low, high):
        assert getattr(TrainConfig.parse({name: bound}), name) == bound
    with pytest.raises(MetanetError, match=f"{name}.*>= {low}"):
        TrainConfig.parse({name: low - 1})
    with pytest.raises(MetanetError, match=f"{name}.*at most {high}"):
        TrainConfig.parse({name: high + 1})


def test_split_seed_fixes_the_split_across_seeds(zoo):
    """``split_seed`` decouples the split from the seed: the training split (seen through its label mean) stays,
    the initialisation changes; without it each seed splits anew."""
    sds, y, groups = zoo

    def fit(seed, **hp):
        return train_metanet("statnn", sds, y, "regression", groups, {**HP, "epochs": 2, **hp}, seed=seed)

    a, b = fit(0, split_seed=7), fit(1, split_seed=7)
    assert a.config["label_mean"] == b.config["label_mean"]
    assert not torch.equal(a.state_dict()["out.weight"], b.state_dict()["out.weight"])
    assert fit(0).config["label_mean"] != fit(1).config["label_mean"]
    assert fit(7).config["label_mean"] == a.config["label_mean"]
    with pytest.raises(MetanetError, match="split_seed"):
        fit(0, split_seed=-1)


@pytest.mark.parametrize("kind", ["gmn", "unf"])
def test_checkpoint_hints_give_each_checkpoint_its_activation(zoo, zoo_hints, kind):
    """Per-checkpoint hints describe each member with its own activation (the zoo mixes relu and tanh runs): GMN
    and UNF with activation features (the default) predict otherwise when the hints say otherwise, without them
    they cannot tell; hints of another length are refused at prediction."""
    sds, y, groups = zoo
    assert {h["activation"] for h in zoo_hints} == {"relu", "tanh"}
    flipped = [{**h, "activation": "tanh" if h["activation"] == "relu" else "relu"} for h in zoo_hints]
    hp = {**HP, "epochs": 3}
    with_act = train_metanet(kind, sds, y, "regression", groups, {**hp, "augment": 1}, seed=0,
                             checkpoint_hints=zoo_hints)
    assert with_act.config["train"]["activations"] is True
    without = train_metanet(kind, sds, y, "regression", groups, {**hp, "activations": False}, seed=0,
                            checkpoint_hints=zoo_hints)
    own, other = (predict(with_act, sds[:12], checkpoint_hints=h[:12])[0] for h in (zoo_hints, flipped))
    assert all(a != b for a, b in zip(own, other))
    relu = [{"activation": "relu"}] * 12
    assert predict(with_act, sds[:12])[0] == predict(with_act, sds[:12], checkpoint_hints=relu)[0]  # family default
    assert (predict(without, sds[:12], checkpoint_hints=zoo_hints[:12])[0]
            == predict(without, sds[:12], checkpoint_hints=flipped[:12])[0])
    again = load_metanet(json.loads(json.dumps(with_act.config)), with_act.state_dict())
    assert predict(again, sds[:12], checkpoint_hints=zoo_hints[:12])[0] == own
    saved_before = json.loads(json.dumps(without.config))  # configs saved before the field: activations off
    del saved_before["train"]["activations"]
    old = load_metanet(saved_before, without.state_dict())
    assert predict(old, sds[:12])[0] == predict(without, sds[:12])[0]
    with pytest.raises(MetanetError, match="12 checkpoints but 11 checkpoint hints"):
        predict(with_act, sds[:12], checkpoint_hints=zoo_hints[:11])


def test_augmented_copies_keep_their_hints(zoo, zoo_hints):
    from metanets.training import augment_training_split
    from metanets.weightspace import Describer

    sds, y, _ = zoo
    train = [0, 4, 7]
    out, y_out, idx, hints = augment_training_split(sds[:10], torch.tensor(y[:10]), train, 2, Describer(), 0,
                                                    zoo_hints[:10])
    assert len(out) == len(hints) == 16 and idx == train + list(range(10, 16))
    assert hints[10:] == [zoo_hints[i] for i in (0, 0, 4, 4, 7, 7)] and hints[:10] == zoo_hints[:10]
    assert augment_training_split(sds[:10], torch.tensor(y[:10]), train, 2, Describer(), 0)[3] is None
