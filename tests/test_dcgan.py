"""DCGAN-DigiFace: the gan-face-generate generator layout, the registered part, and
(when the model zoo has them cached) the real weights."""

from __future__ import annotations

import pytest
import torch

from exface.generators import DCGANDigiFace
from exface.models.dcgan import DCGANGenerator, load_dcgan_weights



@pytest.fixture(autouse=True)
def _no_grad():
    """These tests only run inference; keep autograd off inside each test, not globally."""
    with torch.no_grad():
        yield

# The state-dict keys of gan-face-generate's models.Generator (ngf=64, nc=3, nz=100).
_PACKAGE_KEYS = [f"main.{i}.weight" for i in (0, 3, 6, 9, 12)] + [
    f"main.{i}.{name}" for i in (1, 4, 7, 10)
    for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
]


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    torch.manual_seed(0)
    net = DCGANGenerator()
    for m in net.modules():  # non-trivial running statistics, as after training
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("dcgan") / "weights.tar"
    torch.save({"netG_state_dict": net.state_dict()}, path)
    return path, net.eval()


def test_layout_matches_the_package():
    net = DCGANGenerator()
    assert sorted(net.state_dict()) == sorted(_PACKAGE_KEYS)
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert shapes["main.0.weight"] == (100, 512, 4, 4) and shapes["main.12.weight"] == (64, 3, 4, 4)


def test_part_on_random_weights(random_weights):
    path, ref = random_weights
    G = DCGANDigiFace(weights=str(path))
    assert (G.z_dim, G.w_dim, G.num_ws, G.resolution, G.latent_spaces) == (100, 100, 1, 64, ("z",))
    z = G.sample_z(5, seed=1)
    img = G.synthesize(z)
    assert img.shape == (5, 3, 64, 64) and img.min() >= -1 and img.max() <= 1
    torch.testing.assert_close(img, ref(z[:, :, None, None]))
    torch.testing.assert_close(G.to_w(z), z)  # no mapping network
    # batch norm uses its running statistics even when the wrapper is put in train mode
    G.train()
    torch.testing.assert_close(G.synthesize(z), img)
    torch.testing.assert_close(G.synthesize(z[:1]), img[:1], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="latent spaces"):
        G.synthesize(z, space="w")
    with pytest.raises(ValueError, match=r"\[N, 100\]"):
        G.synthesize(torch.randn(2, 99))


def test_bad_weights_file(tmp_path):
    p = tmp_path / "x.tar"
    torch.save({"something": torch.zeros(1)}, p)
    with pytest.raises(ValueError, match="netG_state_dict"):
        load_dcgan_weights(p)
    with pytest.raises(FileNotFoundError):
        load_dcgan_weights(tmp_path / "missing.tar")


@pytest.fixture(scope="module")
def real_weights():
    from exface import zoo

    if not zoo.is_cached("dcgan-digiface"):
        pytest.skip("dcgan-digiface is not in the model zoo cache; run `exface zoo --fetch-missing`")
    return zoo.fetch("dcgan-digiface", quiet=True)


@pytest.mark.slow
def test_real_weights_give_face_like_images(real_weights):
    G = DCGANDigiFace(weights=str(real_weights))
    z = G.sample_z(16, seed=0)
    img = G.synthesize(z)
    assert img.shape == (16, 3, 64, 64)
    torch.testing.assert_close(G.synthesize(z), img, atol=0, rtol=0)  # deterministic
    # images, not noise or constants: full range used, per-image contrast, varied samples
    assert img.min() < -0.9 and img.max() > 0.5
    per_image_std = img.flatten(1).std(dim=1)
    assert (per_image_std > 0.1).all()
    assert img.std(dim=0).mean() > 0.15
    # spatially smooth like photographs: neighbouring pixels correlate strongly
    a, b = img[..., :, :-1].flatten(), img[..., :, 1:].flatten()
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.8
    # skin in the middle of the frame: red exceeds blue there in (nearly) every sample
    centre = img[:, :, 24:44, 20:44]
    red_minus_blue = (centre[:, 0] - centre[:, 2]).mean(dim=(1, 2))
    assert (red_minus_blue > 0).float().mean() >= 0.9 and red_minus_blue.mean() > 0.1
