"""Zoos: deterministic by seed, resumable, parallel, with wide labels and members that describe and rebuild."""
import json

import pytest
import torch

from metanets import describe, rebuild
from metanets.errors import MetanetError
from metanets.zoo import ZooRecipe, generate_zoo, load_member, load_zoo
from metanets.zoo import cnn, inr
from metanets.zoo.data import digits

RECIPE = dict(kind="small_cnn_digits", size=6, seed=3, checkpoints=[0, 1, 3], chunk=3)


def _weights(out, members):
    return [load_member(out, m) for m in members]


@pytest.fixture(scope="module")
def cnn_zoo(tmp_path_factory):
    out = tmp_path_factory.mktemp("cnn")
    return out, generate_zoo(ZooRecipe(**RECIPE), out)


def test_cnn_zoo_is_deterministic_and_resumes(cnn_zoo, tmp_path):
    out, members = cnn_zoo
    assert len(members) == 6 * 3 and len({m.run for m in members}) == 6
    calls = []
    half = generate_zoo(ZooRecipe(**{**RECIPE, "size": 3}), tmp_path, progress=lambda d, n: calls.append((d, n)))
    assert calls[-1] == (3, 3)
    calls.clear()
    resumed = generate_zoo(ZooRecipe(**RECIPE), tmp_path, progress=lambda d, n: calls.append((d, n)))
    assert calls[0] == (3, 6), "the finished first chunk is reused, not retrained"
    assert [m.id for m in resumed] == [m.id for m in members] and half == resumed[:9]
    for a, b in zip(_weights(out, members), _weights(tmp_path, resumed)):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert [m.labels for m in resumed] == [m.labels for m in members]
    assert json.loads((tmp_path / "labels.json").read_text())["recipe"] == ZooRecipe(**RECIPE).to_json()
    with pytest.raises(MetanetError, match="different recipe"):
        generate_zoo(ZooRecipe(**{**RECIPE, "seed": 4}), tmp_path)


def test_parallel_generation_matches_serial(cnn_zoo, tmp_path):
    out, members = cnn_zoo
    parallel = generate_zoo(ZooRecipe(**RECIPE), tmp_path, workers=2)
    for a, b in zip(_weights(out, members), _weights(tmp_path, parallel)):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_cnn_labels_are_what_the_weights_compute(cnn_zoo):
    """Test accuracy recomputed with an ordinary nn.Sequential and with ``rebuild`` from the description."""
    out, members = cnn_zoo
    _, _, x_test, y_test = digits(RECIPE["seed"])
    recipe, listed = load_zoo(out)
    assert recipe == ZooRecipe(**RECIPE) and listed == members
    for m in members[::4]:
        sd = load_member(out, m)
        act = m.meta["hyperparameters"]["activation"]
        net = cnn.small_cnn(act)
        net.load_state_dict(sd)
        with torch.no_grad():
            logits = net(x_test)
            rebuilt = rebuild(describe(sd, m.meta["hints"]), sd)(x_test)
        torch.testing.assert_close(rebuilt, logits, rtol=1e-4, atol=1e-4)
        assert abs((logits.argmax(1) == y_test).float().mean().item() - m.labels["test_accuracy"]) < 1e-6
        assert m.labels["generalization_gap"] == pytest.approx(m.labels["train_accuracy"] - m.labels["test_accuracy"])
    assert sum(p.numel() for p in cnn.small_cnn().parameters()) == 4970


def test_inr_zoo_fits_digits(tmp_path):
    members = generate_zoo(ZooRecipe("siren_digits", size=4, seed=1, seeds=2, steps=150), tmp_path)
    assert len(members) == 8 and len({m.run for m in members}) == 4, "seeds of one image share a group"
    from sklearn.datasets import load_digits

    d = load_digits()
    for m in members:
        sd = load_member(tmp_path, m)
        assert sum(v.numel() for v in sd.values()) == 1185
        image = torch.tensor(d.images[m.meta["image_index"]], dtype=torch.float32) / 16
        theta = torch.cat([sd[k].reshape(-1) for k in inr.LAYOUT.shapes])
        recon = inr.siren(theta, inr.coordinates()).reshape(8, 8)
        assert ((recon - image) ** 2).mean() < 1e-3
        assert m.labels["digit"] == int(d.target[m.meta["image_index"]])
        assert m.meta["siren"]["convention"] == "DWSNets"
    a, b = (load_member(tmp_path, m) for m in members[:2])
    assert not torch.equal(a["0.weight"], b["0.weight"]), "seeds differ"


def test_inr_shared_initialisation(tmp_path):
    """With shared_init, fit s of every image starts from the same weights (seen after a single step)."""
    def first_layer(shared):
        out = tmp_path / str(shared)
        ms = generate_zoo(ZooRecipe("siren_digits", size=2, seed=0, seeds=2, steps=1, shared_init=shared), out)
        return [load_member(out, m)["1.weight"] for m in ms]  # image 0 seeds 0, 1; image 1 seeds 0, 1

    a0, a1, b0, _ = first_layer(True)
    assert (a0 - b0).abs().max() < 1e-2 < (a0 - a1).abs().max()
    c0, _, d0, _ = first_layer(False)
    assert (c0 - d0).abs().max() > 1e-2


def test_inr_upsampled_grid_and_lower_w0(tmp_path):
    """resolution 16 with w0 = 30 * 16 / 28: the INR reconstructs the bilinear 16x16 upsample to >= 40 dB PSNR
    within the default 300 steps, and its metadata says which grid, target and w0 it was fitted with."""
    recipe = ZooRecipe("siren_digits", size=2, seed=2, seeds=1, w0=30 * 16 / 28, resolution=16)
    members = generate_zoo(recipe, tmp_path)
    from sklearn.datasets import load_digits

    d = load_digits()
    for m in members:
        conv = m.meta["siren"]
        assert conv["w0_first"] == conv["w0_hidden"] == pytest.approx(30 * 16 / 28) and conv["resolution"] == 16
        assert "16x16" in conv["coordinates"] and "upsampled" in conv["target"]
        sd = load_member(tmp_path, m)
        theta = torch.cat([sd[k].reshape(-1) for k in inr.LAYOUT.shapes])
        image = torch.tensor(d.images[m.meta["image_index"]], dtype=torch.float32)[None] / 16
        target = inr.upsample(image, 16)[0]
        assert torch.equal(target[::15, ::15], image[0][::7, ::7]), "the grid's corners are the digit's corners"
        recon = inr.siren(theta, inr.coordinates(16), w0=conv["w0_first"]).reshape(16, 16)
        err = ((recon - target) ** 2).mean()
        assert inr.psnr(err) >= 40 and m.labels["psnr"] == pytest.approx(float(inr.psnr(err)), abs=0.5)
    default = generate_zoo(ZooRecipe("siren_digits", size=1, seed=2, seeds=1, steps=1), tmp_path / "default")
    assert default[0].meta["siren"] == inr.CONVENTION and inr.CONVENTION["w0_first"] == 30.0
    assert inr.CONVENTION["resolution"] == 8 and "8x8" in inr.CONVENTION["coordinates"]


def test_recipe_fingerprint_keeps_zoos_made_before_w0_and_resolution(tmp_path):
    """A zoo folder whose recipe.json predates the INR fields still resumes with the default recipe."""
    recipe = ZooRecipe("siren_digits", size=2, seed=0, seeds=1, steps=5, chunk=1)
    generate_zoo(ZooRecipe(**{**recipe.to_json(), "size": 1}), tmp_path)
    old = {k: v for k, v in recipe.to_json().items() if k not in ("w0", "resolution")}
    (tmp_path / "recipe.json").write_text(json.dumps({**old, "size": 1}))
    assert len(generate_zoo(recipe, tmp_path)) == 2
    with pytest.raises(MetanetError, match="different recipe"):
        generate_zoo(ZooRecipe(**{**recipe.to_json(), "w0": 10.0}), tmp_path)
    assert recipe.fingerprint() != ZooRecipe(**{**recipe.to_json(), "resolution": 16}).fingerprint()


@pytest.mark.parametrize("bad", [dict(kind="resnets", size=3), dict(kind="small_cnn_digits", size=0),
                                 dict(kind="small_cnn_digits", size=2, checkpoints=[3, 1]),
                                 dict(kind="siren_digits", size=2, w0=0), dict(kind="siren_digits", size=2, w0=-3.0),
                                 dict(kind="siren_digits", size=2, w0="30"), dict(kind="siren_digits", size=2, w0=True),
                                 dict(kind="siren_digits", size=2, w0=float("nan")),
                                 dict(kind="siren_digits", size=2, resolution=4),
                                 dict(kind="siren_digits", size=2, resolution=65),
                                 dict(kind="siren_digits", size=2, resolution=16.0),
                                 dict(kind="siren_digits", size=2, steps=0)])
def test_bad_recipes(bad):
    with pytest.raises(MetanetError):
        ZooRecipe(**bad)


def test_cli_writes_zoo_and_prints_summary(tmp_path, capsys):
    from metanets.zoo.__main__ import main

    main(["siren_digits", "--size", "2", "--seeds", "1", "--steps", "20", "--w0", "8.5", "--resolution", "12",
          "--out", str(tmp_path)])
    printed = json.loads(capsys.readouterr().out)
    recipe = json.loads((tmp_path / "recipe.json").read_text())
    assert recipe["w0"] == 8.5 and recipe["resolution"] == 12
    assert printed["members"] == 2 and sum(printed["labels"]["digit_counts"].values()) == 2
    assert len(list((tmp_path / "members").glob("*.safetensors"))) == 2 and (tmp_path / "labels.json").exists()


def test_processes_opening_one_zoo_folder_at_once(tmp_path):
    """Several processes starting on one zoo folder (benchmark seeds run side by side) all open it: each writes
    recipe.json through its own temporary file, so none finds its file renamed away by another."""
    import multiprocessing

    recipe = ZooRecipe("small_cnn_digits", 4, seed=0)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        pool.starmap(_open_many, [(str(tmp_path), recipe, 50)] * 4)
    assert ZooRecipe(**json.loads((tmp_path / "recipe.json").read_text())) == recipe
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chunks", "members", "recipe.json"]


def _open_many(folder, recipe, times):
    from metanets.zoo.store import open_store

    for _ in range(times):
        open_store(folder, recipe)


def test_failed_json_write_leaves_no_temporary_file(tmp_path):
    """A write that fails half-way (data that cannot be serialised) leaves the old file and no temporary file."""
    from metanets.zoo.store import _write_json

    path = tmp_path / "labels.json"
    _write_json(path, {"a": 1})
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    with pytest.raises(TypeError):
        _write_json(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1} and [p.name for p in tmp_path.iterdir()] == ["labels.json"]
