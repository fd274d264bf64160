"""Your own network in every face: torchvision and timm names, a ``_target_`` with a state
dict or a checkpoint, a grey network, module-path taps, the cache key, the errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import torchvision
from nets import TinyNet, calibrated
from test_invert import _Payload
from torch import nn

import ifv
from ifv.faces.cli import main
from ifv.run.setting import Setting
from ifv.zoo import get_spec
from ifv.zoo.models.resnet import CifarResNet

RUN = ["features.n=4", "sampling.n_total=4", "fv.adam_steps=3", "fv.lbfgs_steps=3",
       "reopt.steps=2", "progress=false"]
CMP = ["features.n=4", "compare.objectives=2", "compare.pairs=0", "compare.n_images=8",
       "fv.adam_steps=1", "fv.lbfgs_steps=0", "progress=false"]
R18 = ["model=torchvision:resnet18", "model.input_size=[3,32,32]"]
DENSENET = ["model._target_=ifv.zoo.models.densenet.DenseNetBC", "model.args.depth=22",
            "model.args.growth=12", "model.args.num_classes=10", "model.input_size=[3,32,32]",
            "model.normalize=none"]
GREY = ["model._target_=nets.TinyNet", "model.args.channels=1", "model.input_size=[1,16,16]"]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The weights the tests give: resnet18 and a depth-8 CIFAR ResNet with calibrated batch
    norms, the zoo's DenseNet as a state dict and as a checkpoint (``module.`` prefixed,
    under ``state_dict``), a grey TinyNet's checkpoint, images."""
    root = tmp_path_factory.mktemp("nets")
    torch.manual_seed(0)
    torch.save(calibrated(torchvision.models.resnet18(), (3, 32, 32)).state_dict(),
               root / "r18.pt")
    torch.save(calibrated(CifarResNet(depth=8, num_classes=10), (3, 32, 32)).state_dict(),
               root / "cifar8.pt")
    torch.manual_seed(1)
    dense = get_spec("densenet_patterns").build().state_dict()
    torch.save(dense, root / "dense.pt")
    torch.save({"epoch": 7, "state_dict": {f"module.{k}": v for k, v in dense.items()}},
               root / "dense_ckpt.pt")
    grey = calibrated(TinyNet(channels=1), (1, 16, 16)).state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in grey.items()}}, root / "grey.pt")
    g = torch.Generator().manual_seed(2)
    torch.save(torch.rand(3, 32, 32, generator=g), root / "image.pt")
    torch.save(torch.rand(1, 16, 16, generator=g), root / "grey_image.pt")
    torch.save(torch.zeros(3), root / "tensor.pt")
    return {p.stem: p for p in root.iterdir()}


def _run(args: list[str], out: Path) -> pd.DataFrame:
    assert main(["run", *args, *RUN, f"hydra.run.dir={out}"]) == 0
    return pd.read_parquet(out / "results.parquet")


def test_a_zoo_network_given_by_target_gives_the_zoo_numbers(files: dict[str, Path],
                                                               tmp_path: Path) -> None:
    """The zoo's DenseNet and the same class given by _target_ with the same weights (a state
    dict; a checkpoint with model.weights_key and a module. prefix) give the same results."""
    zoo = _run([f"model.weights={files['dense']}", "layer=dense3"], tmp_path / "zoo")
    own = _run([*DENSENET, f"model.weights={files['dense']}", "layer=dense3"], tmp_path / "own")
    ckpt = _run([*DENSENET, f"model.weights={files['dense_ckpt']}",
                 "model.weights_key=state_dict", "layer=dense3"], tmp_path / "ckpt")
    numbers = [c for c in zoo.columns if c.startswith(("angle", "ssim", "rel_residual"))]
    assert len(numbers) >= 4 and zoo[numbers].notna().all().all()
    for df in (own, ckpt):
        pd.testing.assert_frame_equal(df[numbers], zoo[numbers])
    assert own.model.iloc[0].startswith("ifv.zoo.models.densenet.DenseNetBC(")


def test_torchvision_network_through_run_and_invert(files: dict[str, Path], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """resnet18 tapped at a module path runs an experiment, and ``ifv invert`` predicts what
    the Python API predicts for the same weights handed in as a module with its
    normalization written out."""
    df = _run([*R18, f"model.weights={files['r18']}", "layer=layer2.1"], tmp_path / "run")
    assert len(df) == 4 and df.layer.iloc[0] == "layer2.1" and df.angle_pred.notna().all()
    monkeypatch.chdir(tmp_path)
    assert main(["invert", str(files["image"]), *R18, f"model.weights={files['r18']}",
                 "layer=layer2.1", "features.n=4", "k=0", "invert.out=inv.json"]) == 0
    cli = torch.tensor(json.loads((tmp_path / "inv.json").read_text())["images"][0]["objective"])

    class Normalized(nn.Module):
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net
            self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net((x - self.mean) / self.std)

    net = torchvision.models.resnet18()
    net.load_state_dict(torch.load(files["r18"], weights_only=True))
    api = ifv.invert(files["image"], Normalized(net).eval(), layer="net.layer2.1", features=4,
                     k=0, progress=False)
    assert torch.allclose(cli.double(), api.x_pred[0].double(), atol=1e-6)


def test_compare_across_architectures_and_sources(files: dict[str, Path], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture) -> None:
    """A = torchvision's resnet18, B = a depth-8 CIFAR ResNet registered in your config
    folder (``ifv list`` shows it); ``ifv compare`` writes its outputs for the pair."""
    conf = tmp_path / "conf" / "model"
    conf.mkdir(parents=True)
    (conf / "cifar8.yaml").write_text(
        "_target_: ifv.zoo.models.resnet.CifarResNet\nargs: {depth: 8, num_classes: 10}\n"
        f"weights: {files['cifar8']}\ninput_size: [3, 32, 32]\nnormalize: cifar10\n"
        "name: null\nweights_key: null\ndownload: false\ncache_dir: null\ntrain: {}\n")
    monkeypatch.setenv("IFV_CONFIG_DIR", str(tmp_path / "conf"))
    assert main(["list"]) == 0
    assert "cifar8" in capsys.readouterr().out
    out = tmp_path / "cmp"
    assert main(["compare", *R18, f"model.weights={files['r18']}", "layer=layer2", *CMP,
                 "compare.b_model=cifar8", "compare.b_layer=layer3", f"compare.out={out}"]) == 0
    summary = json.loads((out / "summary.json").read_text())["settings"]
    assert summary["a"]["model"].startswith("torchvision:resnet18")
    assert summary["b"]["model"].startswith("ifv.zoo.models.resnet.CifarResNet(")
    assert (summary["a"]["layer"], summary["b"]["layer"]) == ("layer2", "layer3")
    assert len(pd.read_parquet(out / "compare.parquet")) == 2


def test_a_grey_network_runs_and_inverts(files: dict[str, Path], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    df = _run([*GREY, f"model.weights={files['grey']}", "model.weights_key=state_dict",
               "layer=features.2"], tmp_path / "run")
    assert df.angle_pred.notna().all()
    monkeypatch.chdir(tmp_path)
    assert main(["invert", str(files["grey_image"]), *GREY, f"model.weights={files['grey']}",
                 "model.weights_key=state_dict", "layer=features.2", "features.n=4", "k=0",
                 "invert.out=inv.json"]) == 0
    settings = json.loads((tmp_path / "inv.json").read_text())["settings"]
    assert settings["model"] == "nets.TinyNet(channels=1)" and settings["n_f"] == 4


def test_the_cache_key_is_the_weights_content(files: dict[str, Path], tmp_path: Path) -> None:
    """Two files with the same content share a key; a changed file gets a new one, as does
    the same file under another architecture."""
    def key(path: Path, **args: int) -> str:
        model = {"_target_": "ifv.zoo.models.resnet.CifarResNet",
                 "args": {"depth": 8, "num_classes": 10, **args}}
        return Setting.make(model=model, weights=str(path), input_size=[3, 32, 32],
                            layer="layer3", features=4).model_key()

    copy = tmp_path / "copy.pt"
    shutil.copy(files["cifar8"], copy)
    before = key(copy)
    assert before == key(files["cifar8"])
    net = calibrated(CifarResNet(depth=8, num_classes=10), (3, 32, 32),
                     seed=5)
    torch.save(net.state_dict(), copy)
    assert key(copy) != before
    assert key(files["cifar8"], num_classes=10) == before
    ckpt = Setting.make(model={"_target_": "nets.TinyNet", "args": {"channels": 1}},
                        weights=str(files["grey"]), weights_key="state_dict",
                        input_size=[1, 16, 16], layer="features.2", features=4)
    bare = Setting.make(model={"_target_": "nets.TinyNet", "args": {"channels": 1}},
                        weights=str(files["grey"]), input_size=[1, 16, 16],
                        layer="features.2", features=4)
    assert ckpt.model_key() != bare.model_key()  # another state dict of the same file
    assert key(files["cifar8"]) != Setting.make(model="resnet20_cifar", layer="layer3",
                                                weights=str(files["cifar8"]),
                                                features=4).model_key()


def test_layers_lists_every_module_path(capsys: pytest.CaptureFixture) -> None:
    assert main(["layers", *R18]) == 0
    out = capsys.readouterr().out
    assert "layer3.1.conv2" in out and "[256, 2, 2]" in out and "fc" in out
    assert main(["layers", "model._target_=nets.TokenNet", "model.input_size=[3,8,8]"]) == 0
    rows = {ln.split()[0]: ln for ln in capsys.readouterr().out.splitlines()[1:]}
    assert rows["conv"].endswith("[4, 8, 8]            maxpool_mean, mean, center")
    assert rows["tokens"].endswith("none: not tappable (needs (C,) or (C, H, W))")
    assert rows["head"].endswith("maxpool_mean, mean, center, identity")


def _errors(files: dict[str, Path]) -> dict[str, tuple[list[str], str]]:
    tiny = ["model._target_=nets.TinyNet", "model.input_size=[3,16,16]"]
    return {
        "torchvision_name": (["model=torchvision:resnet81"], "close matches: resnet18"),
        "import": (["model._target_=nosuchpkg.Net", "model.input_size=[3,8,8]"],
                   "cannot import 'nosuchpkg'"),
        "name_in_module": (["model._target_=nets.TinyNte", "model.input_size=[3,8,8]"],
                           "TinyNet"),
        "not_a_module": (["model._target_=nets.not_a_network", "model.input_size=[3,8,8]"],
                         "returned a dict, not a torch.nn.Module"),
        "args": ([*tiny, "model.args.depth=3"], "unexpected keyword argument 'depth'"),
        "no_input_size": (["model._target_=nets.TinyNet"], "pass model.input_size=[C, H, W]"),
        "no_weights": (tiny, "pass model.weights=PATH"),
        "missing": ([*tiny, "model.weights=nowhere.pt"], "no weights file nowhere.pt"),
        "not_a_state_dict": ([*tiny, f"model.weights={files['tensor']}"], "holds no state dict"),
        "no_key": ([*tiny, f"model.weights={files['grey']}", "model.weights_key=model"],
                   "holds no 'model' (model.weights_key); its keys: state_dict"),
        "does_not_fit": ([*tiny, f"model.weights={files['r18']}"],
                         "missing ['features.0.weight'"),
        "shape": ([*tiny, f"model.weights={files['grey']}", "model.weights_key=state_dict"],
                  "size mismatch for features.0.weight"),
        "layer": ([*R18, f"model.weights={files['r18']}", "layer=layer3.9"],
                  "close matches: layer3.1, layer3.0"),
        "input_size": ([*GREY[:2], "model.input_size=[3,16,16]"],
                       "cannot take inputs of model.input_size=[3, 16, 16]"),
        "normalize": ([*tiny, "model.weights=random", "model.normalize=foo"],
                      "valid: imagenet, cifar10, none"),
        "normalize_inf": ([*tiny, "model.weights=random",
                           "model.normalize={mean:[0,0,0],std:[1,inf,1]}"],
                          "mean and std need one finite value per channel, std > 0"),
        "normalize_nan": ([*tiny, "model.weights=random",
                           "model.normalize={mean:[0,nan,0],std:[1,1,1]}"],
                          "mean and std need one finite value per channel, std > 0"),
        "tokens": (["model._target_=nets.TokenNet", "model.input_size=[3,8,8]",
                    "model.weights=random", "layer=tokens"],
                   "layer=tokens gives [4, 64] per sample; aggregation=maxpool_mean needs (C,) "
                   "or (C, H, W) (ifv layers model=nets.TokenNet shows what fits each layer)"),
    }


@pytest.mark.parametrize("case", ["torchvision_name", "import", "name_in_module",
                                  "not_a_module", "args", "no_input_size", "no_weights",
                                  "missing", "not_a_state_dict", "no_key", "does_not_fit",
                                  "shape", "layer", "input_size", "normalize", "normalize_inf",
                                  "normalize_nan", "tokens"])
def test_every_mistake_is_one_line(case: str, files: dict[str, Path], tmp_path: Path,
                                   capsys: pytest.CaptureFixture) -> None:
    args, expect = _errors(files)[case]
    layer = [] if any(a.startswith("layer=") for a in args) else ["layer=features.2"]
    out = tmp_path / "run"
    try:  # refused while composing (a return) or as the run loads the network (an exit)
        code = main(["run", *args, *layer, *RUN, f"hydra.run.dir={out}"])
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ifv: error:") and "\n" not in err and "Traceback" not in err
    assert expect in err, err
    assert not out.exists()  # refused before Hydra made the run's folder


def _bad_weights(root: Path) -> dict[str, tuple[list[str], str]]:
    """Weights files whose content is wrong, by case: the arguments and the message."""
    import pickle

    good = calibrated(TinyNet(), (3, 16, 16)).state_dict()
    (root / "empty.pt").write_bytes(b"")
    (root / "text.pt").write_text("not weights\n")
    torch.save({"model": {"state_dict": good}}, root / "nested.pt")
    torch.save(TinyNet(), root / "module.pt")
    with open(root / "evil.pt", "wb") as f:
        pickle.dump(_Payload(root / "MARKER"), f)
    objects = "it holds Python objects other than tensors, which ifv does not unpickle"
    return {"empty": ([f"model.weights={root / 'empty.pt'}"], "EOFError"),
            "text": ([f"model.weights={root / 'text.pt'}"], "not a readable torch.save file"),
            "nested": ([f"model.weights={root / 'nested.pt'}"],
                       "holds no state dict (a dict of tensors) but a dict with keys model"),
            "module": ([f"model.weights={root / 'module.pt'}"], objects),
            "evil": ([f"model.weights={root / 'evil.pt'}"], objects),
            "no_weights": ([], "is built by model._target_: pass model.weights=PATH")}


@pytest.mark.parametrize("case", ["empty", "text", "nested", "module", "evil", "no_weights"])
def test_bad_weights_are_one_line_before_any_folder(case: str, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    """Weights whose content is wrong are refused in one line, exit 2, before Hydra makes
    the run's folder and before any stage: nothing is left behind, no pickle runs."""
    args, expect = _bad_weights(tmp_path)[case]
    before = sorted(tmp_path.iterdir())
    code = main(["run", "model._target_=nets.TinyNet", "model.input_size=[3,16,16]", *args,
                 "layer=features.2", *RUN, f"hydra.run.dir={tmp_path / 'run'}",
                 f"stage_cache={tmp_path / 'stages'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("ifv: error:") and "\n" not in err, err
    assert expect in err, err
    assert sorted(tmp_path.iterdir()) == before  # no run folder, no stage cache, no marker


def test_a_missing_hub_file_is_one_line_before_any_folder(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    code = main(["run", "model=googlenet", "layer=inception4c", *RUN,
                 f"hydra.run.dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "pass model.download=true" in err, err
    assert list(tmp_path.iterdir()) == []


def test_a_sweep_checks_every_job_before_it_starts_any(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    torch.save(calibrated(TinyNet(), (3, 16, 16)).state_dict(), tmp_path / "good.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    code = main(["run", "-m", "model._target_=nets.TinyNet", "model.input_size=[3,16,16]",
                 f"model.weights={tmp_path / 'good.pt'},{tmp_path / 'empty.pt'}",
                 "layer=features.2", *RUN, f"hydra.sweep.dir={tmp_path / 'sweep'}",
                 f"stage_cache={tmp_path / 'stages'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and f"cannot read weights {tmp_path / 'empty.pt'}" \
        in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.pt", "good.pt"]


def test_timm_networks(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("timm")
    args = ["model=timm:resnet10t", "model.input_size=[3,32,32]"]
    assert main(["layers", *args]) == 0
    assert "layer2.0.conv1" in capsys.readouterr().out
    df = _run([*args, "model.weights=random", "layer=layer2"], tmp_path / "run")
    assert df.model.iloc[0] == "timm:resnet10t" and df.angle_pred.notna().all()


def test_timm_weights_offline_fetch_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture) -> None:
    """model=timm:NAME without model.download: the weights come from the Hugging Face cache
    or not at all (one line, where they were looked for); the hub is never asked."""
    timm = pytest.importorskip("timm")
    import huggingface_hub
    from safetensors.torch import save_file

    calls: list[object] = []

    def asked(*args: object, **_kwargs: object) -> None:
        calls.append(args)
        raise AssertionError("the network was asked")

    for module in (huggingface_hub, huggingface_hub.file_download, timm.models._hub):
        monkeypatch.setattr(module, "hf_hub_download", asked)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", asked)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    args = ["run", "model=timm:resnet10t", "model.input_size=[3,32,32]", "layer=layer2", *RUN]
    assert main([*args, f"hydra.run.dir={tmp_path / 'a'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err == (
        f"ifv: error: no pretrained weights for timm:resnet10t in the Hugging Face cache "
        f"{tmp_path / 'hf'}: looked for timm/resnet10t.c3_in1k (model.safetensors or "
        "pytorch_model.bin); pass model.download=true to download them, or "
        "model.weights=PATH")
    assert not (tmp_path / "a").exists() and not calls
    repo = tmp_path / "hf" / "models--timm--resnet10t.c3_in1k"
    (repo / "snapshots" / "c0").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("c0")
    torch.manual_seed(3)
    save_file(timm.create_model("resnet10t").state_dict(),
              repo / "snapshots" / "c0" / "model.safetensors")
    df = _run(args[1:], tmp_path / "b")
    assert df.angle_pred.notna().all() and not calls


@pytest.mark.filterwarnings(r"ignore:\s*'hydra/launcher/joblib' is validated against:UserWarning")
def test_a_sweep_with_the_critical_space_on_your_network(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A two-job sweep through the submitit launcher (SLURM's local stand-in) with
    Algorithm 1's search, on a network given by _target_ (its module on PYTHONPATH)."""
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    args = ["model._target_=nets.TinyNet", "model.input_size=[3,16,16]", "model.weights=random",
            "layer=features.5", "critical=search", "hydra/launcher=submitit_local",
            "hydra.launcher.timeout_min=5"]
    assert main(["run", "-m", "k=0,2", *args, *RUN, f"hydra.sweep.dir={tmp_path}"]) == 0
    runs = [pd.read_parquet(tmp_path / d / "results.parquet") for d in "01"]
    assert sorted(df.k.iloc[0] for df in runs) == [0.0, 2.0]
    assert all((tmp_path / d / "critical.parquet").is_file() for d in "01")
    assert {df.model.iloc[0] for df in runs} == {"nets.TinyNet"}
