"""On a tiny seeded zoo built here, every metanet ranks held-out checkpoints well (Kendall tau > 0.5), and a
trained metanet reloads, predicts and checks compatibility; bad input raises MetanetError."""
import json

import pytest
import torch

from metanets import MetanetError, compatible, load_metanet, predict, train_metanet
from metanets.zoo import ZooRecipe, generate_zoo, load_member

HP = {"epochs": 25, "patience": 30, "hidden": 32, "channels": 4, "weight_decay": 0.01, "val_fraction": 0.2,
      "test_fraction": 0.3}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("zoo")
    members = generate_zoo(ZooRecipe("small_cnn_digits", size=64, seed=0, checkpoints=[1, 2, 4], chunk=32), out)
    return [load_member(out, m) for m in members], [m.labels["test_accuracy"] for m in members], [m.run for m in members]


@pytest.fixture(scope="module")
def trained(zoo):
    sds, y, groups = zoo
    return {kind: train_metanet(kind, sds, y, "regression", groups, HP, seed=0) for kind in ("statnn", "unf", "gmn")}


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
    with pytest.raises(MetanetError, match="unknown metanet kind"):
        train_metanet("nfn", sds[:10], y[:10], "regression", groups[:10])
    with pytest.raises(MetanetError, match="groups"):
        train_metanet("statnn", sds[:6], y[:6], "regression", ["r0"] * 6)
    assert issubclass(MetanetError, ValueError)
