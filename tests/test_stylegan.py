"""StyleGAN2/3: pure-torch ops, the restricted NVIDIA pickle reader, rosinality .pt
mapping and the registered generator parts. Everything runs on small random networks
that exface's own builders write in NVIDIA's / rosinality's file layouts.

Parity with NVIDIA's reference code (max |diff| < 1e-5 on these layouts) was measured
out of tree; see the generators report. These tests do not need that code.
"""

from __future__ import annotations

import io
import os
import pickle
import subprocess

import numpy as np
import pytest
import scipy.signal
import torch
import torch.nn.functional as F

from exface.generators import StyleGAN2, StyleGAN3
from exface.models import stylegan_ops as ops
from exface.models.nvidia_pickle import (
    InertObject,
    PersistentRecord,
    UnsafePickleError,
    load_network_pickle,
    load_stylegan,
    record_tensors,
    safe_load,
)
from exface.models.rosinality import load_rosinality, to_rosinality_state_dict
from exface.models.stylegan2 import StyleGAN2Generator, modulated_conv2d
from exface.models.stylegan3 import StyleGAN3Generator
from exface.testing.stylegan_pickles import (
    build_stylegan2,
    build_stylegan3,
    make_rosinality_checkpoint,
    make_stylegan2_pickle,
    make_stylegan3_pickle,
    write_network_pickle,
)



@pytest.fixture(autouse=True)
def _no_grad():
    """These tests only run inference; keep autograd off inside each test, not globally."""
    with torch.no_grad():
        yield


@pytest.fixture(scope="module")
def sg2_pkl(tmp_path_factory):
    return make_stylegan2_pickle(tmp_path_factory.mktemp("sg2") / "sg2.pkl", resolution=32, seed=0)


@pytest.fixture(scope="module")
def sg3_pkls(tmp_path_factory):
    d = tmp_path_factory.mktemp("sg3")
    return {cfg: make_stylegan3_pickle(d / f"sg3{cfg}.pkl", config=cfg, seed=1) for cfg in "TR"}


# ---------------------------------------------------------------------------------------
# ops against their definitions


def test_upfirdn2d_matches_scipy_upfirdn():
    """Separable upfirdn2d == scipy.signal.upfirdn along each axis (with padding applied)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 2, 9, 11)).astype(np.float32)
    taps = rng.standard_normal(12).astype(np.float32)
    for up, down in [(1, 1), (2, 1), (1, 2), (4, 2)]:
        pad = 5
        ours = ops.upfirdn2d(torch.from_numpy(x), torch.from_numpy(taps), up=up, down=down, padding=pad)
        # reference: zero-stuff, pad, full 'valid' convolution, subsample -- per axis
        def axis(a, ax):
            a = np.moveaxis(a, ax, -1)
            n = a.shape[-1]
            z = np.zeros(a.shape[:-1] + (n * up,), np.float64)
            z[..., ::up] = a
            z = np.pad(z, [(0, 0)] * (z.ndim - 1) + [(pad, pad)])
            full = np.apply_along_axis(lambda v: np.convolve(v, taps, mode="valid"), -1, z)
            return np.moveaxis(full[..., ::down], -1, ax)
        ref = axis(axis(x.astype(np.float64), 3), 2)
        assert ours.shape == ref.shape
        np.testing.assert_allclose(ours.numpy(), ref, atol=1e-4)
    # scipy's polyphase upfirdn (zero-stuff, full convolution, subsample) on a 1-D signal
    sig = rng.standard_normal(10).astype(np.float32)
    for up, down in [(1, 1), (2, 1), (3, 2)]:
        ref = scipy.signal.upfirdn(taps, sig, up=up, down=down)
        ours = ops.upfirdn2d(torch.from_numpy(sig)[None, None, None], torch.from_numpy(taps)[None],
                             up=[up, 1], down=[down, 1], padding=[len(taps) - 1, len(taps) - up, 0, 0])
        np.testing.assert_allclose(ours[0, 0, 0].numpy(), ref, atol=1e-5)


@pytest.mark.parametrize("k,up,groups,flip", [(3, 2, 1, False), (3, 2, 2, True), (1, 2, 1, True), (3, 1, 2, True)])
def test_conv2d_resample_equals_upsample_then_conv(k, up, groups, flip):
    """The transposed-convolution fast path computes the defining upfirdn-then-conv."""
    torch.manual_seed(0)
    x = torch.randn(2, 4, 6, 6)
    w = torch.randn(6, 4 // groups, k, k)
    f = ops.setup_filter([1, 3, 3, 1])
    got = ops.conv2d_resample(x, w, f=f, up=up, padding=k // 2, groups=groups, flip_weight=flip)
    fw = 4
    p = k // 2
    pad = [p + (fw + up - 1) // 2, p + (fw - up) // 2] * 2 if up > 1 else [p] * 4
    pad = [pad[0], pad[1], pad[2], pad[3]]
    ref = ops.upfirdn2d(x, f if up > 1 else None, up=up, padding=pad, gain=up * up)
    ref = F.conv2d(ref, w if flip else w.flip([2, 3]), groups=groups)
    assert got.shape == (2, 6, 6 * up, 6 * up)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_filtered_lrelu_is_bias_upsample_act_downsample():
    torch.manual_seed(0)
    x, b = torch.randn(1, 3, 10, 10), torch.randn(3)
    fu, fd = torch.rand(12), torch.rand(12)
    got = ops.filtered_lrelu(x, fu, fd, b, up=2, down=2, padding=[11, 10, 11, 10], gain=2.0, slope=0.2, clamp=0.5)
    y = ops.upfirdn2d(x + b[None, :, None, None], fu, up=2, padding=[11, 10, 11, 10], gain=4)
    y = (F.leaky_relu(y, 0.2) * 2.0).clamp(-0.5, 0.5)
    torch.testing.assert_close(got, ops.upfirdn2d(y, fd, down=2))


def test_modulated_conv_fused_and_unfused_agree_and_fp16_prenormalization():
    torch.manual_seed(0)
    x, w, s = torch.randn(3, 8, 8, 8), torch.randn(5, 8, 3, 3), torch.randn(3, 8) + 1
    f = ops.setup_filter([1, 3, 3, 1])
    for up in (1, 2):
        a = modulated_conv2d(x, w, s, up=up, padding=1, resample_filter=f, flip_weight=up == 1, fused_modconv=True)
        b = modulated_conv2d(x, w, s, up=up, padding=1, resample_filter=f, flip_weight=up == 1, fused_modconv=False)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # Demodulated output does not depend on the weight/style scale: the fp16 path's
    # pre-normalisation is exact (checked here in float64 with the same formula).
    xd = x.double()
    ref = modulated_conv2d(xd, w.double(), s.double(), padding=1)
    scaled = modulated_conv2d(xd, w.double() * 1e3, s.double() * 1e-2, padding=1)
    torch.testing.assert_close(ref, scaled)


# ---------------------------------------------------------------------------------------
# the pickle reader


def test_pickle_layout_and_round_trip(sg2_pkl):
    data = load_network_pickle(sg2_pkl)
    assert set(data) == {"G", "D", "G_ema", "augment_pipe", "training_set_kwargs"}
    rec = data["G_ema"]
    assert isinstance(rec, PersistentRecord) and rec.class_name == "Generator" and rec.version == 6
    assert rec.init_kwargs["img_resolution"] == 32 and rec.init_kwargs["mapping_kwargs"] == {"num_layers": 2}
    assert "exface" in rec.module_src  # the builder's note; sources are kept as text only
    tensors = record_tensors(rec)
    assert "synthesis.b32.conv0.affine.weight" in tensors and "mapping.w_avg" in tensors
    assert data["training_set_kwargs"].resolution == 32  # EasyDict stand-in keeps attribute access

    ours = load_stylegan(sg2_pkl)
    ref = build_stylegan2(resolution=32, seed=0)
    assert isinstance(ours, StyleGAN2Generator) and not ours.training
    z = torch.randn(3, 32, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ours(z), ref(z), atol=0, rtol=0)
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[k], v, atol=0, rtol=0)


@pytest.mark.parametrize("layout,protocol", [("ada", 3), ("stylegan3", 4), ("ada", 2)])
@pytest.mark.parametrize("architecture", ["skip", "resnet", "orig"])
def test_stylegan2_layouts_and_architectures(tmp_path, layout, protocol, architecture):
    net = build_stylegan2(resolution=16, channels=16, seed=2, architecture=architecture, num_fp16_res=2)
    path = write_network_pickle(tmp_path / "g.pkl", net, layout=layout, protocol=protocol)
    rec = load_network_pickle(path)["G_ema"]
    assert ("synthesis_kwargs" in rec.init_kwargs) == (layout == "ada")
    loaded = load_stylegan(path)
    assert loaded.synthesis.b16.architecture == architecture and loaded.synthesis.num_fp16_res == 2
    z = torch.randn(2, 32)
    torch.testing.assert_close(loaded(z, truncation_psi=0.5), net(z, truncation_psi=0.5), atol=0, rtol=0)


def test_stylegan3_round_trip(sg3_pkls):
    for cfg, path in sg3_pkls.items():
        ours = load_stylegan(path)
        ref = build_stylegan3(config=cfg, seed=1)
        assert isinstance(ours, StyleGAN3Generator)
        z = torch.randn(2, 32, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(ours(z), ref(z), atol=0, rtol=0)
        ws = ours.mapping(z)
        torch.testing.assert_close(ours.synthesis(ws, fused_modconv=True), ours.synthesis(ws, fused_modconv=False),
                                   atol=1e-5, rtol=1e-5)
        layer = getattr(ours.synthesis, ours.synthesis.layer_names[1])
        if cfg == "R":  # radial (2-D) downsampling filters and 1x1 convolutions
            assert layer.weight.shape[-1] == 1 and layer.down_filter.ndim == 2
        else:
            assert layer.weight.shape[-1] == 3 and layer.down_filter.ndim == 1


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvalEvil:
    def __reduce__(self):
        return (eval, ("__import__('os').getcwd()",))


class _PopenEvil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (subprocess.Popen, (["touch", str(self.marker)],))


@pytest.mark.parametrize("kind", ["system", "eval", "popen"])
def test_malicious_pickles_are_refused_before_anything_runs(tmp_path, kind):
    marker = tmp_path / "pwned"
    evil = {"system": _Evil(marker), "eval": _EvalEvil(), "popen": _PopenEvil(marker)}[kind]
    # hidden deep inside an otherwise NVIDIA-looking snapshot
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"G_ema": {"state": [1, 2, {"x": evil}]}, "D": None}))
    expected = {"system": r"(posix|os|nt)\.system", "eval": r"builtins\.eval", "popen": r"subprocess\.Popen"}[kind]
    with pytest.raises(UnsafePickleError, match=expected):
        load_network_pickle(path)
    with pytest.raises(UnsafePickleError, match=expected):
        StyleGAN2(str(path))
    assert not marker.exists()


def test_malicious_storage_bytes_and_torch_zip_are_refused(tmp_path):
    marker = tmp_path / "pwned"

    class _EvilStorage:  # the inner legacy torch.save stream of a storage carries the payload
        def __reduce__(self):
            return (torch.storage._load_from_bytes, (pickle.dumps(_Evil(marker)),))

    with pytest.raises(UnsafePickleError, match="system"):
        safe_load(pickle.dumps({"w": _EvilStorage()}))
    buf = io.BytesIO()
    torch.save({"g_ema": {"input.input": torch.zeros(1)}, "payload": _Evil(marker)}, buf)
    with pytest.raises(UnsafePickleError, match="system"):
        safe_load(buf.getvalue())
    assert not marker.exists()


def test_inert_training_classes_and_legacy_torch_streams():
    """Training-code classes become inert records; tensors (views, fp16, params, numpy
    scalars/arrays) come back from plain pickles and legacy torch.save streams alike."""
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    obj = {
        "view": base[1:, ::2],
        "half": torch.randn(3).half(),
        "param": torch.nn.Parameter(torch.ones(2)),
        "np": np.broadcast_to(np.asarray(5), [2]),
        "scalar": np.float64(0.25),
        "set": {1, 2},
    }
    for blob in (pickle.dumps(obj, protocol=2), pickle.dumps(obj, protocol=4)):
        back = safe_load(blob)
        torch.testing.assert_close(back["view"], base[1:, ::2])
        assert back["half"].dtype == torch.float16 and back["scalar"] == 0.25 and back["set"] == {1, 2}
        assert list(back["np"]) == [5, 5]
    for zip_format in (False, True):
        buf = io.BytesIO()
        torch.save(obj, buf, _use_new_zipfile_serialization=zip_format)
        back = safe_load(buf.getvalue())
        torch.testing.assert_close(back["view"], base[1:, ::2])
        torch.testing.assert_close(back["param"], torch.ones(2))
    # dtypes that torch pickles over untyped storages (_rebuild_tensor_v3)
    odd = {"u16": torch.arange(5).to(torch.uint16)}
    assert safe_load(pickle.dumps(odd))["u16"].tolist() == [0, 1, 2, 3, 4]

    # a class from NVIDIA's training namespace: recorded, never imported
    data = b"\x80\x02ctraining.dataset\nImageFolderDataset\n)\x81}X\x04\x00\x00\x00pathX\x05\x00\x00\x00x.zipsb."
    inert = safe_load(data)
    assert isinstance(inert, InertObject) and inert.__module_path__ == "training.dataset.ImageFolderDataset"
    assert inert.state == {"path": "x.zip"}


def _with_byteorder(blob: bytes, order: bytes | None) -> bytes:
    """A torch.save zip with its ``byteorder`` record replaced (``None``: left out)."""
    import zipfile

    src, out = zipfile.ZipFile(io.BytesIO(blob)), io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            if info.filename.endswith("/byteorder"):
                if order is not None:
                    dst.writestr(info, order)
            else:
                dst.writestr(info, src.read(info))
    return out.getvalue()


def test_torch_zip_byteorder_record_is_honoured():
    buf = io.BytesIO()
    torch.save({"w": torch.arange(4, dtype=torch.float32)}, buf)
    blob = buf.getvalue()
    assert safe_load(_with_byteorder(blob, b"little"))["w"].tolist() == [0, 1, 2, 3]
    assert safe_load(_with_byteorder(blob, None))["w"].tolist() == [0, 1, 2, 3]  # pre-1.12 files: little
    with pytest.raises(pickle.UnpicklingError, match="big-endian torch.save zip checkpoints are not supported"):
        safe_load(_with_byteorder(blob, b"big"))
    with pytest.raises(pickle.UnpicklingError, match="byteorder record is 'middle'"):
        safe_load(_with_byteorder(blob, b"middle"))


def test_not_a_network_pickle_errors(tmp_path):
    p = tmp_path / "plain.pkl"
    p.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ValueError, match="not an NVIDIA"):
        load_network_pickle(p)
    with pytest.raises(ValueError, match="neither an NVIDIA"):
        StyleGAN2(str(p))
    # a TensorFlow-era (G, D, Gs) tuple of dnnlib.tflib networks
    tf = b"\x80\x02(cdnnlib.tflib.network\nNetwork\n)\x81}bcdnnlib.tflib.network\nNetwork\n)\x81}b" \
         b"cdnnlib.tflib.network\nNetwork\n)\x81}bt."
    p.write_bytes(tf)
    with pytest.raises(ValueError, match="TensorFlow .* legacy.py"):
        StyleGAN2(str(p))
    with pytest.raises(FileNotFoundError, match="no generator file"):
        StyleGAN2(str(tmp_path / "missing.pkl"))


# ---------------------------------------------------------------------------------------
# the registered generator parts


def test_stylegan2_part_spaces_truncation_and_noise(sg2_pkl):
    G = StyleGAN2(str(sg2_pkl))
    assert (G.z_dim, G.w_dim, G.resolution, G.num_ws) == (32, 32, 32, 8)
    assert G.latent_spaces == ("z", "w", "w+")
    z = G.sample_z(4, seed=3)
    img = G.synthesize(z)
    assert img.shape == (4, 3, 32, 32) and img.dtype == torch.float32
    assert img.min() >= -1 and img.max() <= 1 and img.std() > 0.05
    torch.testing.assert_close(G.synthesize(z), img, atol=0, rtol=0)  # const noise: deterministic

    # z, w and w+ paths agree
    w = G.to_w(z)
    assert w.shape == (4, 32)
    torch.testing.assert_close(G.synthesize(w, "w"), img)
    torch.testing.assert_close(G.synthesize(w[:, None].repeat(1, G.num_ws, 1), "w+"), img)
    torch.testing.assert_close(G.to_wplus(z), w[:, None].repeat(1, G.num_ws, 1))

    # psi = 0 collapses every z onto the w_avg image
    G0 = StyleGAN2(str(sg2_pkl), truncation_psi=0.0)
    avg_img = G.synthesize(G.w_avg[None].repeat(2, 1), "w")
    torch.testing.assert_close(G0.synthesize(z[:2]), avg_img, atol=1e-6, rtol=0)
    torch.testing.assert_close(G0.to_w(z), G.w_avg[None].expand(4, -1))
    # cutoff truncates only the first layers of w+
    wp = G.to_wplus(z, truncation_psi=0.0, truncation_cutoff=3)
    torch.testing.assert_close(wp[:, :3], G.w_avg.expand(4, 3, -1))
    torch.testing.assert_close(wp[:, 3:], G.to_wplus(z)[:, 3:])

    # noise modes
    none = G.synthesize(z, noise_mode="none")
    assert (none - img).abs().max() > 1e-3
    gen = torch.Generator().manual_seed(0)
    r1 = G.synthesize(z, noise_mode="random", generator=gen)
    r2 = G.synthesize(z, noise_mode="random", generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(r1, r2)
    assert (r1 - img).abs().max() > 1e-3
    with pytest.raises(ValueError, match="noise_mode"):
        G.synthesize(z, noise_mode="bogus")

    # batching does not change a sample
    torch.testing.assert_close(G.synthesize(z[:1]), img[:1], atol=1e-5, rtol=0)
    # shape errors name the expected shape
    with pytest.raises(ValueError, match=r"\[N, 32\]"):
        G.synthesize(torch.randn(2, 31))
    with pytest.raises(ValueError, match=r"\[N, 8, 32\]"):
        G.synthesize(torch.randn(2, 7, 32), "w+")
    G.train()
    assert not G.net.training


def test_stylegan3_part(sg3_pkls):
    G = StyleGAN3(str(sg3_pkls["T"]), truncation_psi=0.7)
    assert G.num_ws == 8 and G.resolution == 32
    z = G.sample_z(2, seed=0)
    img = G.synthesize(z)
    assert img.shape == (2, 3, 32, 32) and -1 <= img.min() and img.max() <= 1
    torch.testing.assert_close(G.synthesize(G.to_w(z), "w"), img)
    torch.testing.assert_close(G.synthesize(G.to_wplus(z), "w+"), img)
    with pytest.raises(ValueError, match="holds a StyleGAN3 generator; use the StyleGAN3 generator part"):
        StyleGAN2(str(sg3_pkls["T"]))


def test_class_conditional_pickle_is_a_clear_error(tmp_path):
    net = build_stylegan2(resolution=8, channels=8, c_dim=4)
    path = write_network_pickle(tmp_path / "cond.pkl", net)
    loaded = load_stylegan(path)  # the network itself supports labels
    c = torch.eye(4)[:2]
    assert loaded(torch.randn(2, 32), c).shape == (2, 3, 8, 8)
    with pytest.raises(ValueError, match="class-conditional"):
        loaded(torch.randn(2, 32))
    with pytest.raises(ValueError, match=r"class-conditional \(c_dim=4\)"):
        StyleGAN2(str(path))


# ---------------------------------------------------------------------------------------
# rosinality checkpoints


def test_rosinality_checkpoint(tmp_path):
    path = make_rosinality_checkpoint(tmp_path / "r.pt", resolution=16, style_dim=32, n_mlp=2, channels=16, seed=4)
    ref = build_stylegan2(resolution=16, z_dim=32, w_dim=32, channels=16, num_mapping_layers=2,
                          conv_clamp=None, seed=4)
    sd = torch.load(path, weights_only=True)["g_ema"]
    assert "convs.0.conv.blur.kernel" in sd and sd["conv1.conv.weight"].shape == (1, 16, 16, 3, 3)
    assert sd["noises.noise_0"].shape == (1, 1, 4, 4) and sd["to_rgb1.bias"].shape == (1, 3, 1, 1)
    net = load_rosinality(path)
    z = torch.randn(3, 32)
    torch.testing.assert_close(net(z, truncation_psi=0.6), ref(z, truncation_psi=0.6), atol=0, rtol=0)
    G = StyleGAN2(str(path), truncation_psi=0.6)
    torch.testing.assert_close(G.synthesize(z), ref(z, truncation_psi=0.6).clamp(-1, 1), atol=0, rtol=0)
    assert to_rosinality_state_dict(net).keys() == sd.keys()


def test_rosinality_training_checkpoint_without_latent_avg(tmp_path):
    """Training checkpoints carry optimizer state and an argparse.Namespace and no
    latent_avg; w_avg is then the mean of mapped z."""
    import argparse

    net = build_stylegan2(resolution=8, channels=8, conv_clamp=None, seed=5)
    sd = to_rosinality_state_dict(net)
    torch.save({"g": sd, "d": {}, "g_ema": sd, "args": argparse.Namespace(size=8, latent=32)}, tmp_path / "c.pt")
    loaded = load_rosinality(tmp_path / "c.pt")
    # the builder's w_avg is a 2000-sample mean of the same mapping: close, not identical
    assert (loaded.mapping.w_avg - net.mapping.w_avg).abs().max() < 0.15
    z = torch.randn(2, 32)
    torch.testing.assert_close(loaded(z), net(z), atol=0, rtol=0)


def test_float16_path_stays_close_to_float32():
    """The num_fp16_res layers (float16 on CUDA) run here on CPU via force_fp16: the
    float16 pre-normalisation, clamping and dtype hand-offs keep the image within ~1e-3."""
    net2 = build_stylegan2(resolution=16, channels=16, num_fp16_res=2, seed=6)
    net3 = build_stylegan3(resolution=16, channel_base=512, channel_max=32, num_layers=4, num_fp16_res=2, seed=6)
    for net in (net2, net3):
        ws = net.mapping(torch.randn(2, 32))
        ref = net.synthesis(ws)
        for fused in (True, False):
            half = net.synthesis(ws, force_fp16=True, fused_modconv=fused)
            assert half.dtype == torch.float32
            assert (half - ref).abs().max() < 0.01 * ref.abs().max()
            assert (half - ref).abs().max() > 0  # it did run in float16
