"""IResNet backbone, checkpoint formats (arcface_torch / ElasticFace / AdaFace), IResNet and timm embedders."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from exface.embedders.iresnet import IResNetEmbedder
from exface.embedders.timm_embedder import TimmEmbedder
from exface.models.checkpoint_io import adaface_to_iresnet, iresnet_to_adaface, load_torch_file, read_iresnet_checkpoint
from exface.models.iresnet import build_iresnet
from exface.registry import get_registry
from exface.testing.iresnet_checkpoints import make_iresnet_checkpoint, random_iresnet
from exface.testing.pickle_payload import CodeRunningPayload


@pytest.fixture(scope="module")
def faces() -> torch.Tensor:
    """Three [-1, 1] RGB 112x112 inputs, as the embedder contract takes them."""
    return torch.rand(3, 3, 112, 112, generator=torch.Generator().manual_seed(1)) * 2 - 1


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("iresnet")
    return {
        "arcface_torch": make_iresnet_checkpoint(d / "backbone.pth", "r18", "arcface_torch", seed=3),
        "elasticface": make_iresnet_checkpoint(d / "295672backbone.pth", "r18", "elasticface", seed=3),
        "adaface": make_iresnet_checkpoint(d / "adaface_ir18.ckpt", "r18", "adaface", seed=3),
    }


def test_state_dict_keys_follow_arcface_torch():
    """Key names and shapes that arcface_torch's iresnet50 writes into backbone.pth."""
    sd = build_iresnet("r50").state_dict()
    expected_shapes = {
        "conv1.weight": (64, 3, 3, 3),
        "prelu.weight": (64,),
        "layer1.0.bn1.running_var": (64,),
        "layer1.0.conv2.weight": (64, 64, 3, 3),
        "layer1.0.downsample.0.weight": (64, 64, 1, 1),
        "layer1.0.downsample.1.weight": (64,),
        "layer3.13.prelu.weight": (256,),
        "layer4.2.bn3.num_batches_tracked": (),
        "bn2.weight": (512,),
        "fc.weight": (512, 512 * 7 * 7),
        "features.running_mean": (512,),
    }
    for key, shape in expected_shapes.items():
        assert tuple(sd[key].shape) == shape, key
    block = re.compile(r"^layer[1-4]\.\d+\.(bn[123]|conv[12]|prelu|downsample\.[01])\.")
    head = re.compile(r"^(conv1|bn1|prelu|bn2|fc|features)\.")
    assert all(block.match(k) or head.match(k) for k in sd), [k for k in sd if not (block.match(k) or head.match(k))]
    assert not any(k.startswith("layer1.3.") or k.startswith("layer3.14.") for k in sd)
    assert "layer2.1.downsample.0.weight" not in sd  # only the first block of a stage projects


def test_arcface_and_elasticface_files_give_identical_embeddings(ckpts, faces):
    a = IResNetEmbedder("r18", ckpts["arcface_torch"])
    e = IResNetEmbedder("r18", ckpts["elasticface"], checkpoint_format="elasticface")
    auto = IResNetEmbedder("auto", ckpts["elasticface"])
    with torch.no_grad():
        ya, ye, yauto = a(faces), e(faces), auto(faces)
        direct = F.normalize(random_iresnet("r18", seed=3)((faces + 1) * 127.5 / 127.5 - 1))
    assert ya.shape == (3, 512) and a.embedding_dim == 512 and a.input_size == (112, 112)
    assert torch.allclose(ya.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.equal(ya, ye) and torch.equal(ya, yauto)
    assert torch.allclose(ya, direct, atol=1e-5)
    assert a.color_order == "RGB" and a.mean == (127.5,) * 3 and a.std == (127.5,) * 3
    assert not a.training  # loaded weights -> eval mode (BatchNorm running statistics)


def test_adaface_ckpt_maps_onto_iresnet_and_takes_bgr(ckpts, faces):
    ck = read_iresnet_checkpoint(ckpts["adaface"])
    assert ck.layout == "adaface" and ck.arch == "r18" and ck.strided_identity_shortcut
    assert "head.kernel" in ck.ignored_keys
    emb = IResNetEmbedder("r18", ckpts["adaface"], checkpoint_format="adaface")
    assert emb.color_order == "BGR" and emb.mean == (127.5,) * 3
    ref = random_iresnet("r18", seed=3, strided_identity_shortcut=True)
    bgr = (((faces + 1) * 127.5).flip(1) / 255.0 - 0.5) / 0.5  # AdaFace inference.py's to_input
    with torch.no_grad():
        got, want = emb(faces), F.normalize(ref(bgr))
    assert torch.allclose(got, want, atol=1e-5)
    # The channel order matters: RGB input to the same network gives another embedding.
    with torch.no_grad():
        rgb = F.normalize(ref(faces))
    assert (rgb - want).abs().max() > 1e-2


def test_adaface_key_mapping_round_trips():
    net = random_iresnet("r34", seed=0, strided_identity_shortcut=True)
    ada = iresnet_to_adaface(net.state_dict(), net.layers)
    assert "model.body.0.shortcut_layer.0.weight" not in ada  # AdaFace: MaxPool2d(1, 2) shortcut
    assert "model.body.3.shortcut_layer.0.weight" in ada  # first 128-ch block of IR-34
    assert ada["model.output_layer.3.weight"].shape == (512, 512 * 49)
    back, layers, ignored = adaface_to_iresnet({k[len("model."):]: v for k, v in ada.items()})
    assert layers == (3, 4, 6, 3) and ignored == []
    assert back.keys() == net.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in net.state_dict().items())


def test_embedder_reads_its_own_state_dict(tmp_path, ckpts, faces):
    """exface-saved weights (keys under ``backbone.``) load like the published formats."""
    src = IResNetEmbedder("r18", ckpts["arcface_torch"])
    torch.save(src.state_dict(), tmp_path / "embedder.pt")
    torch.save({"state_dict": {f"embedder.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "fr.ckpt")
    with torch.no_grad():
        want = src(faces)
        assert torch.equal(IResNetEmbedder("r18", tmp_path / "embedder.pt")(faces), want)
        assert torch.equal(IResNetEmbedder("auto", tmp_path / "fr.ckpt")(faces), want)


def test_random_init_without_weights(faces):
    emb = IResNetEmbedder("r18", checkpoint_format="adaface").eval()
    assert emb.color_order == "BGR" and "layer1.0.downsample.0.weight" not in emb.backbone.state_dict()
    with torch.no_grad():
        y = emb(faces)
    assert y.shape == (3, 512) and torch.allclose(y.norm(dim=1), torch.ones(3), atol=1e-5)
    with pytest.raises(ValueError, match="takes \\(112, 112\\) crops"):
        emb(torch.zeros(1, 3, 96, 96))
    with pytest.raises(ValueError, match="needs weights"):
        IResNetEmbedder("auto")


def test_lightning_objects_are_not_executed(tmp_path, faces):
    """Hyper-parameter objects in a .ckpt become inert stand-ins; their pickled code never runs."""
    path = make_iresnet_checkpoint(tmp_path / "ada.ckpt", "r18", "adaface", seed=3)
    ckpt = load_torch_file(path)
    marker = tmp_path / "marker"
    ckpt["hyper_parameters"] = {"payload": CodeRunningPayload(str(marker)), "lr": 0.1}
    torch.save(ckpt, path)
    assert not marker.exists()
    emb = IResNetEmbedder("r18", path)
    assert not marker.exists()
    assert emb.color_order == "BGR"
    # Control: an unrestricted unpickler would have run it.
    torch.load(path, weights_only=False)
    assert marker.read_text() == "executed"


def test_missing_keys_are_named(tmp_path, ckpts):
    state = torch.load(ckpts["arcface_torch"], weights_only=True)
    del state["layer2.1.bn1.weight"], state["fc.bias"]
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match=r"missing keys: .*layer2\.1\.bn1\.weight.*fc\.bias|missing keys: .*fc\.bias"):
        IResNetEmbedder("r18", tmp_path / "broken.pth")
    with pytest.raises(ValueError, match="layer2.1.bn1.weight"):
        IResNetEmbedder("r18", tmp_path / "broken.pth")


def test_shortcut_variant_follows_the_layout_not_the_keys(tmp_path, ckpts):
    """An arcface_torch file without layer1.0's projection is damaged: it must not build
    AdaFace's strided-identity variant (which would load strictly and embed wrongly)."""
    state = torch.load(ckpts["arcface_torch"], weights_only=True)
    assert not read_iresnet_checkpoint(ckpts["arcface_torch"]).strided_identity_shortcut
    assert read_iresnet_checkpoint(ckpts["adaface"]).strided_identity_shortcut
    cut = {k: v for k, v in state.items() if not k.startswith("layer1.0.downsample.")}
    torch.save(cut, tmp_path / "cut.pth")
    with pytest.raises(ValueError, match=r"missing keys: layer1\.0\.downsample\.\*.*damaged"):
        read_iresnet_checkpoint(tmp_path / "cut.pth")
    with pytest.raises(ValueError, match=r"layer1\.0\.downsample"):
        IResNetEmbedder("r18", tmp_path / "cut.pth")
    # Only part of the projection missing: the strict load names it.
    part = {k: v for k, v in state.items() if k != "layer1.0.downsample.0.weight"}
    torch.save(part, tmp_path / "part.pth")
    with pytest.raises(ValueError, match=r"missing keys: layer1\.0\.downsample\.0\.weight"):
        IResNetEmbedder("r18", tmp_path / "part.pth")
    # An AdaFace-variant network saved under arcface_torch key names is refused with a pointer.
    ada = IResNetEmbedder("r18", ckpts["adaface"])
    torch.save(ada.state_dict(), tmp_path / "ada_embedder.pt")
    with pytest.raises(ValueError, match="AdaFace's variant under arcface_torch key names"):
        IResNetEmbedder("r18", tmp_path / "ada_embedder.pt")


def test_unknown_format_names_the_keys_found(tmp_path, ckpts):
    torch.save({"encoder.stem.weight": torch.zeros(3), "encoder.head.bias": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="unrecognized layout.*encoder.stem.weight"):
        IResNetEmbedder("r18", tmp_path / "other.pth")
    with pytest.raises(ValueError, match="adaface layout, not 'arcface_torch'"):
        IResNetEmbedder("r18", ckpts["adaface"], checkpoint_format="arcface_torch")
    with pytest.raises(ValueError, match="holds r18, but arch='r50'; pass arch='r18'"):
        IResNetEmbedder("r50", ckpts["arcface_torch"])
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, tmp_path / "no_weights.pth")
    with pytest.raises(ValueError, match="no state dict.*'epoch', 'optimizer'"):
        IResNetEmbedder("r18", tmp_path / "no_weights.pth")


def test_parts_are_registered():
    reg = get_registry("embedders")
    assert "IResNetEmbedder" in reg and "TimmEmbedder" in reg


# ---- TimmEmbedder --------------------------------------------------------------------


def test_timm_embedder_shapes_and_norm(faces):
    emb = TimmEmbedder("test_resnet", embedding_dim=64).eval()
    with torch.no_grad():
        y = emb(faces)
    assert y.shape == (3, 64) and torch.allclose(y.norm(dim=1), torch.ones(3), atol=1e-5)
    vit = TimmEmbedder("test_vit", embedding_dim=32, input_size=(112, 112)).eval()  # fixed-size model
    with torch.no_grad():
        assert vit(faces).shape == (3, 32)
    with pytest.raises(ValueError, match="did you mean"):
        TimmEmbedder("test_resnett")


def test_timm_embedder_pretrained_path(tmp_path, faces):
    import timm

    torch.manual_seed(0)
    trained = TimmEmbedder("test_resnet", embedding_dim=64)
    torch.save({"state_dict": {f"embedder.{k}": v for k, v in trained.state_dict().items()}}, tmp_path / "fr.ckpt")
    reloaded = TimmEmbedder("test_resnet", embedding_dim=64, pretrained_path=tmp_path / "fr.ckpt")
    with torch.no_grad():
        assert torch.equal(trained.eval()(faces), reloaded(faces))

    # A plain timm checkpoint with its ImageNet classifier: classifier dropped, backbone loaded.
    clf = timm.create_model("test_resnet", pretrained=False, num_classes=10)
    torch.save(clf.state_dict(), tmp_path / "timm.pth")
    init = TimmEmbedder("test_resnet", pretrained_path=tmp_path / "timm.pth")
    assert torch.equal(init.backbone.conv1[0].weight, clf.conv1[0].weight)

    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="missing keys"):
        TimmEmbedder("test_resnet", pretrained_path=tmp_path / "wrong.pth")


def test_fp16_runs_the_head_like_arcface_torch(faces):
    """arcface_torch's fp16: bn2, flatten and dropout inside autocast; fc/features in float32."""
    net = random_iresnet("r18", seed=0).eval()
    seen = {}

    def record(name):
        def hook(module, inputs, output):
            seen[name] = (inputs[0].dtype, output.dtype)
        return hook

    for name in ("bn2", "dropout", "fc", "features"):
        getattr(net, name).register_forward_hook(record(name))
    with torch.no_grad():
        want = net(faces)
        assert all(i == o == torch.float32 for i, o in seen.values())
        net.fp16 = True
        got = net(faces)
    low = torch.bfloat16  # autocast's type on CPU (float16 on CUDA)
    assert seen["bn2"][0] == low and seen["dropout"][1] == low
    assert seen["fc"] == (torch.float32, torch.float32) and seen["features"] == (torch.float32, torch.float32)
    assert got.dtype == torch.float32
    assert F.cosine_similarity(got, want).min() > 0.98
