"""The model zoo's paper tier without the internet: CIFAR-10 files, GoogLeNet weights, shapes.

Every file here is written by the test (CIFAR-10 in its original pickle format, GoogLeNet
state dicts of random weights); downloads fetch test-made files from a local HTTP server.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.googlenet import BasicConv2d

from ifv.errors import UserError
from ifv.faces.cli import main
from ifv.math.objective import tap
from ifv.zoo import MODELS, Recipe, get_spec, load, registry
from ifv.zoo.data import cifar
from ifv.zoo.models.densenet import DenseNetBC
from ifv.zoo.models.googlenet import GoogLeNetFV
from ifv.zoo.train import dataset, pad_crop

HUB_FILE = "googlenet-1378be20.pth"
CLASSIFIERS = [n for n, s in MODELS.items() if s.arch in ("densenet_bc", "googlenet")]


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A local HTTP server of a tmp folder: (folder, base URL)."""
    root = tmp_path / "server"
    root.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


# ---------------------------------------------------------------- CIFAR-10


def test_cifar_reads_the_original_format_and_drops_class_4(tmp_path: Path,
                                                           fake_cifar: Callable) -> None:
    batches = fake_cifar(tmp_path)
    spec = get_spec("densenet_cifar").with_recipe(n_train=1000, n_test=1000)
    x_tr, y_tr, x_te, y_te = dataset(spec, data_root=tmp_path)
    assert x_tr.shape == (100, 3, 32, 32) and x_tr.dtype == torch.uint8
    assert x_te.shape == (20, 3, 32, 32) and y_tr.tolist()[:20] == [i % 10 for i in range(20)]
    # a row is 1024 red, 1024 green, 1024 blue values, each row-major 32x32
    assert torch.equal(x_tr[0], torch.from_numpy(batches["data_batch_1"][0].reshape(3, 32, 32)))
    assert torch.equal(x_te[3], torch.from_numpy(batches["test_batch"][3].reshape(3, 32, 32)))

    ex4 = get_spec("densenet_cifar_ex4").with_recipe(n_train=1000, n_test=1000)
    x4, y4, _, y4_te = dataset(ex4, data_root=tmp_path)
    assert len(x4) == 90 and 4 not in y4.tolist() and (y4_te == 4).sum() == 2
    assert torch.equal(x4[4], x_tr[5])  # the class-4 image at index 4 is gone
    assert len(dataset(ex4.with_recipe(n_train=7, n_test=3), data_root=tmp_path)[0]) == 7


def test_cifar_missing_or_corrupt_is_one_user_error(tmp_path: Path,
                                                    fake_cifar: Callable) -> None:
    spec = get_spec("densenet_cifar")
    with pytest.raises(UserError, match="model.data.download=true") as exc:
        dataset(spec, data_root=tmp_path / "nowhere")
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in str(exc.value)
    fake_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="cannot read CIFAR-10"):
        dataset(spec, data_root=tmp_path)


def test_cifar_download_reads_a_test_archive(tmp_path: Path, server: tuple[Path, str],
                                             fake_cifar: Callable,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cifar(tmp_path / "src", n=10)
    archive = server[0] / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setattr(cifar, "URL", f"{server[1]}/{archive.name}")
    monkeypatch.setattr(cifar, "ARCHIVE", archive.name)
    monkeypatch.setattr(cifar, "ARCHIVE_MD5", md5)
    spec = get_spec("densenet_cifar").with_recipe(n_train=1000, n_test=1000)
    x_tr, _, x_te, _ = dataset(spec, data_root=tmp_path / "dst", download=True)
    assert len(x_tr) == 50 and len(x_te) == 10
    assert (tmp_path / "dst" / "cifar-10-batches-py" / "test_batch").is_file()

    monkeypatch.setattr(cifar, "URL", f"{server[1]}/absent.tar.gz")
    with pytest.raises(UserError, match="cannot download CIFAR-10"):
        dataset(spec, data_root=tmp_path / "other", download=True)


def test_train_cifar_through_the_cli(tmp_path: Path, fake_cifar: Callable,
                                     capsys: pytest.CaptureFixture) -> None:
    fake_cifar(tmp_path / "data", n=10)
    cache = tmp_path / "cache"
    args = ["train", "model=densenet_cifar_ex4", f"model.data.root={tmp_path / 'data'}",
            "model.train.n_train=16", "model.train.n_test=8", "model.train.batch_size=8",
            "model.train.epochs=1", f"model.cache_dir={cache}", "progress=false"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "trained densenet_cifar_ex4 (paper tier)" in out and "dead_share_4" in out
    (record,) = (cache / "models").glob("densenet_cifar_ex4-*.json")
    rec = json.loads(record.read_text())
    assert rec["n_train"] == 16 and rec["recipe"]["schedule"] == "step"
    assert rec["data_seeds"]["root"] == str(tmp_path / "data")
    assert main([*args[:2], f"model.data.root={tmp_path / 'none'}"]) == 2
    assert "model.data.download=true" in capsys.readouterr().err
    assert main(["train", "model=googlenet"]) == 2
    assert "not trained by ifv" in capsys.readouterr().err


# ---------------------------------------------------------------- GoogLeNet weights


@pytest.fixture(scope="module")
def gn_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A torchvision GoogLeNet state dict of random weights with the auxiliary heads, as the
    hub file holds them; BN statistics measured on random images, so outputs vary."""
    torch.manual_seed(0)
    net = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=False)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # a plain average of the batches below
    with torch.no_grad():
        net.train()(torch.rand(8, 3, 96, 96) * 2 - 1)
    state = net.state_dict()
    path = tmp_path_factory.mktemp("gn") / "googlenet_state.pth"
    torch.save(state, path)
    return path


def _torchvision_googlenet(path: Path, transform_input: bool) -> torch.nn.Module:
    net = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=False,
                                       transform_input=transform_input)
    state = torch.load(path, weights_only=True)
    net.load_state_dict({k: v for k, v in state.items() if not k.startswith("aux")})
    return net.eval()


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache under tmp (TORCH_HOME)."""
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_googlenet_normalizes_as_its_weights_expect(gn_weights: Path) -> None:
    model = load("googlenet", weights=str(gn_weights))
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        out = model(x)
        # torchvision's way: the preset transform's ImageNet mean/std, then transform_input
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        ref = _torchvision_googlenet(gn_weights, transform_input=True)((x - mean) / std)
        raw = _torchvision_googlenet(gn_weights, transform_input=False)
        manual = raw((x - 0.5) / 0.5)
        unnormalized = raw(x)
    scale = ref.abs().max()
    assert scale > 0 and out.shape == (2, 1000)
    assert torch.allclose(out, ref, atol=1e-4 * scale) and torch.allclose(out, manual,
                                                                          atol=1e-5 * scale)
    assert not torch.allclose(out, unnormalized, atol=1e-2 * scale)


def test_googlenet_from_the_hub_cache_equals_the_path(gn_weights: Path, hub: Path) -> None:
    spec = get_spec("googlenet")
    assert spec.weights_file() == hub / HUB_FILE
    with pytest.raises(UserError, match="model.download=true") as exc:
        load("googlenet")
    assert str(hub / HUB_FILE) in str(exc.value) and "\n" not in str(exc.value)
    hub.mkdir(parents=True)
    shutil.copy(gn_weights, hub / HUB_FILE)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(load("googlenet")(x), load("googlenet", weights=str(gn_weights))(x))


def test_googlenet_download_on_request(gn_weights: Path, hub: Path, server: tuple[Path, str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    sha = hashlib.sha256(gn_weights.read_bytes()).hexdigest()
    src = server[0] / f"googlenet-{sha[:8]}.pth"  # torch hub checks the hash in the name
    shutil.copy(gn_weights, src)
    monkeypatch.setattr(registry, "_source_url", lambda spec: f"{server[1]}/{src.name}")
    with pytest.raises(UserError, match="model.download=true"):
        load("googlenet")
    model = load("googlenet", download=True)
    assert (hub / src.name).is_file()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), load("googlenet", weights=str(gn_weights))(x))
    bad = server[0] / "googlenet-00000000.pth"
    shutil.copy(gn_weights, bad)  # a hash that does not match
    monkeypatch.setattr(registry, "_source_url", lambda spec: f"{server[1]}/{bad.name}")
    with pytest.raises(UserError, match="cannot download"):
        load("googlenet", download=True)


def test_bad_weight_files_are_one_line_user_errors(tmp_path: Path, hub: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x00 not a checkpoint")
    with pytest.raises(UserError, match="cannot read weights") as exc:
        load("googlenet", weights=str(corrupt))
    assert str(corrupt) in str(exc.value)
    with pytest.raises(UserError, match="no weights file"):
        load("googlenet", weights=str(tmp_path / "absent.pth"))
    other = tmp_path / "densenet.pth"
    torch.save(get_spec("densenet_patterns").build().state_dict(), other)
    with pytest.raises(UserError, match="do not fit googlenet"):
        load("googlenet", weights=str(other))
    hub.mkdir(parents=True)
    shutil.copy(corrupt, hub / HUB_FILE)
    with pytest.raises(UserError, match="cannot read weights"):
        load("googlenet")
    # the same through `ifv run`: one line on stderr before any work, no traceback, no folder
    args = ["run", "model=googlenet", "layer=inception4c", f"model.weights={corrupt}",
            f"hydra.run.dir={tmp_path / 'out'}", "progress=false"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot read weights" in err and "Traceback" not in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- shapes and channels


def test_googlenet_inception4c_is_512_by_14_by_14() -> None:
    model = load("googlenet", weights="random")
    assert tap(model, "inception4c", torch.rand(1, 3, 224, 224)).shape == (1, 512, 14, 14)
    assert sum(p.numel() for p in model.parameters()) == 6_624_904  # torchvision's count


def test_densenet_bc_100_is_the_papers() -> None:
    spec = get_spec("densenet_cifar")
    model = spec.build()
    n = sum(p.numel() for p in model.parameters())
    assert 0.75e6 < n < 0.85e6  # "0.8M weights"
    assert spec.layers["dense3"] == 342
    assert tap(model.eval(), "dense3", torch.rand(1, 3, 32, 32)).shape == (1, 342, 8, 8)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_every_listed_layer_has_its_channels(name: str) -> None:
    spec = get_spec(name)
    model = load(spec, weights="random")
    side = min(spec.input_size[0], 64)
    x = torch.rand(1, 3, side, side)
    for layer, channels in spec.layers.items():
        assert tap(model, layer, x).shape[1] == channels, (name, layer)


def test_stand_ins_have_the_papers_relu_and_their_softplus_twins_are_smooth() -> None:
    """The stand-ins keep the paper's ReLU; the _softplus variants are smooth twins."""
    def acts(name: str) -> set[type]:
        model = get_spec(name).build()
        return {type(m) for m in model.modules() if isinstance(m, nn.ReLU | nn.Softplus)}

    assert acts("densenet_patterns") == acts("densenet_patterns_ex4") == {nn.ReLU}
    assert acts("densenet_cifar") == acts("densenet22_cifar") == {nn.ReLU}
    assert (acts("densenet_patterns_softplus") == acts("densenet_patterns_ex4_softplus")
            == {nn.Softplus})
    # a ReLU DenseNet is piecewise linear in its input (Hessian 0 almost everywhere), so FV's
    # optima sit on kinks; the Softplus one has curvature
    x, d = torch.rand(1, 3, 32, 32), torch.randn(1, 3, 32, 32)

    def curvature(activation: str) -> float:
        torch.manual_seed(0)
        model = DenseNetBC(depth=10, activation=activation).eval()
        _, hvp = torch.autograd.functional.hvp(lambda z: model(z)[0, 0], x, d)
        return float(hvp.norm())

    assert curvature("relu") == 0.0
    assert curvature("softplus") > 1e-3
    with pytest.raises(ValueError, match="valid: relu, softplus"):
        DenseNetBC(depth=10, activation="tanh")


def test_googlenet_twin_is_smooth_and_taps_inception4c_before_its_activation() -> None:
    """googlenet_patterns_softplus: Softplus and average pooling everywhere; inception4c's
    activation moved after the concatenation: the same function, but the tap sees
    pre-activations (negative values). googlenet_patterns keeps ReLU and max pooling."""
    relu = {type(m) for m in load("googlenet_patterns", weights="random").modules()}
    assert nn.MaxPool2d in relu and not relu & {nn.Softplus, nn.AvgPool2d}
    spec = get_spec("googlenet_patterns_softplus")
    stand_in = load(spec, weights="random")
    kinds = {type(m) for m in stand_in.modules()}
    assert nn.Softplus in kinds and nn.AvgPool2d in kinds
    assert not kinds & {nn.ReLU, nn.MaxPool2d, BasicConv2d}
    post = GoogLeNetFV(**{**spec.arch_kwargs, "preactivation": ()}).eval()
    assert set(post.state_dict()) == set(stand_in.state_dict())
    post.load_state_dict(stand_in.state_dict())
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(stand_in(x), post(x))
        pre, act = tap(stand_in, "inception4c", x), tap(post, "inception4c", x)
    assert float(pre.min()) < 0.0 < float(act.min())
    torch.testing.assert_close(nn.functional.softplus(pre, beta=4.0), act)
    # the paper tier keeps torchvision's ReLU and max pooling
    paper = {type(m) for m in load("googlenet", weights="random").modules()}
    assert nn.MaxPool2d in paper and not paper & {nn.Softplus, nn.AvgPool2d}
    with pytest.raises(ValueError, match="must name Inception children"):
        GoogLeNetFV(preactivation=("conv1",))
    with pytest.raises(ValueError, match="valid: max, avg"):
        GoogLeNetFV(pool="min")


def test_every_recipe_field_and_the_resolution_are_in_the_key() -> None:
    spec = get_spec("densenet_patterns")
    base = spec.with_recipe(**asdict(Recipe()))
    keys = {base.key()}
    for name, value in (("epochs", 7), ("schedule", "step"), ("classifier_weight_decay", 0.3),
                        ("seed", 5), ("exclude_classes", (4,))):
        keys.add(base.with_recipe(**{name: value}).key())
    keys.add(replace(base, input_size=(48, 48)).key())
    assert len(keys) == 7  # each change names another checkpoint
    assert base.key() == spec.with_recipe(**asdict(Recipe())).key()  # and the key is stable


def test_pad_crop_crops_each_image_at_its_offset() -> None:
    x = torch.rand(5, 3, 8, 8)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    out = pad_crop(x, 2, g1)
    off = torch.randint(0, 5, (5, 2), generator=g2).tolist()
    xp = torch.nn.functional.pad(x, (2, 2, 2, 2))
    ref = torch.stack([xp[i, :, a:a + 8, b:b + 8] for i, (a, b) in enumerate(off)])
    assert torch.equal(out, ref)


def test_list_shows_tiers_weights_and_layers(hub: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert f"weights missing: place {hub / HUB_FILE}" in out
    assert "inception4c (512)" in out and "dense3 (342)" in out
    for name, spec in MODELS.items():
        assert any(line.split()[:2] == [name, spec.tier] for line in out.splitlines())
