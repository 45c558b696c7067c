"""StyleGAN3 generator (Karras et al. 2021, "Alias-Free Generative Adversarial Networks"),
configs T (translation equivariant) and R (rotation equivariant, 1x1 convolutions and
radially symmetric downsampling filters).

The synthesis network starts from Fourier features of a learned (and user-adjustable,
via the ``transform`` buffer) 2-D transform and runs ``num_layers`` modulated
convolutions, each followed by the alias-free filtered leaky ReLU
(:func:`exface.models.stylegan_ops.filtered_lrelu`). Parameter and buffer names are
NVIDIA's (``synthesis.L3_52_1024.up_filter``...), so a network pickle's tensors load
with ``strict=True``. The low-pass filters are designed at construction exactly as the
paper describes (Kaiser-windowed sinc, or jinc for config R) and are overwritten by the
pickle's stored filters on load.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.signal
import scipy.special
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from exface.models.stylegan2 import FullyConnectedLayer, StyleGAN2Generator, check_noise_mode
from exface.models.stylegan_ops import filtered_lrelu

__all__ = [
    "modulated_conv2d_sg3",
    "design_lowpass_filter",
    "SynthesisInput",
    "SynthesisLayer3",
    "SynthesisNetwork3",
    "StyleGAN3Generator",
]


def modulated_conv2d_sg3(
    x: Tensor,
    w: Tensor,
    s: Tensor,
    demodulate: bool = True,
    padding: int = 0,
    input_gain: Tensor | None = None,
    fused: bool = True,
) -> Tensor:
    """StyleGAN3's modulated convolution: weights and styles are pre-normalised to unit
    RMS, then modulated, demodulated and scaled by the per-input-channel ``input_gain``."""
    batch = x.shape[0]
    out_channels, in_channels, kh, kw = w.shape
    if demodulate:
        w = w * w.square().mean([1, 2, 3], keepdim=True).rsqrt()
        s = s * s.square().mean().rsqrt()
    gain = None if input_gain is None else input_gain.expand(batch, in_channels)

    if not fused:
        # Scale activations instead of weights; the demodulation coefficients
        # sum_{i,k} (w[o,i,k] s[n,i])^2 are one matmul.
        dcoefs = (s.square() @ w.square().sum(dim=[2, 3]).t() + 1e-8).rsqrt() if demodulate else None
        scale = s if gain is None else s * gain
        x = x * scale.to(x.dtype).reshape(batch, in_channels, 1, 1)
        x = F.conv2d(x, w.to(x.dtype), padding=padding)
        if dcoefs is not None:
            x = x * dcoefs.to(x.dtype).reshape(batch, out_channels, 1, 1)
        return x

    wm = w.unsqueeze(0) * s.reshape(batch, 1, in_channels, 1, 1)  # [N, O, I, k, k]
    if demodulate:
        wm = wm * (wm.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt().reshape(batch, out_channels, 1, 1, 1)
    if gain is not None:
        wm = wm * gain.reshape(batch, 1, in_channels, 1, 1)
    x = x.reshape(1, -1, *x.shape[2:])
    x = F.conv2d(x, wm.reshape(-1, in_channels, kh, kw).to(x.dtype), padding=padding, groups=batch)
    return x.reshape(batch, -1, *x.shape[2:])


def design_lowpass_filter(numtaps: int, cutoff: float, width: float, fs: float, radial: bool = False) -> Tensor | None:
    """Kaiser-windowed low-pass FIR: separable sinc taps, or a 2-D windowed jinc when
    ``radial``; None for a single tap (identity)."""
    if numtaps == 1:
        return None
    if not radial:
        taps = scipy.signal.firwin(numtaps=numtaps, cutoff=cutoff, width=width, fs=fs)
        return torch.as_tensor(taps, dtype=torch.float32)
    t = (np.arange(numtaps) - (numtaps - 1) / 2) / fs
    r = np.hypot(*np.meshgrid(t, t))
    with np.errstate(invalid="ignore", divide="ignore"):
        f = scipy.special.j1(2 * cutoff * (np.pi * r)) / (np.pi * r)
    f = np.where(r == 0, cutoff, f)  # limit of j1(2 pi c r) / (pi r) at r = 0
    beta = scipy.signal.kaiser_beta(scipy.signal.kaiser_atten(numtaps, width / (fs / 2)))
    window = np.kaiser(numtaps, beta)
    f = f * np.outer(window, window)
    return torch.as_tensor(f / np.sum(f), dtype=torch.float32)


class SynthesisInput(nn.Module):
    """Fourier-feature input: sinusoids of fixed random frequencies inside a disc of
    radius ``bandwidth``, rotated and translated by an affine function of w and by the
    user's ``transform`` (a 3x3 inverse transform of the output image)."""

    def __init__(self, w_dim: int, channels: int, size: int, sampling_rate: float, bandwidth: float) -> None:
        super().__init__()
        self.w_dim, self.channels = w_dim, channels
        self.size = np.broadcast_to(np.asarray(size), [2]).astype(np.int64)
        self.sampling_rate, self.bandwidth = float(sampling_rate), float(bandwidth)
        freqs = torch.randn([channels, 2])
        radii = freqs.square().sum(dim=1, keepdim=True).sqrt()
        freqs = freqs / (radii * radii.square().exp().pow(0.25)) * bandwidth
        phases = torch.rand([channels]) - 0.5
        self.weight = nn.Parameter(torch.randn([channels, channels]))
        self.affine = FullyConnectedLayer(w_dim, 4, weight_init=0, bias_init=[1, 0, 0, 0])
        self.register_buffer("transform", torch.eye(3, 3))
        self.register_buffer("freqs", freqs)
        self.register_buffer("phases", phases)

    def forward(self, w: Tensor) -> Tensor:
        n = w.shape[0]
        t = self.affine(w)  # (cos, sin, tx, ty) up to scale
        t = t / t[:, :2].norm(dim=1, keepdim=True)
        rot = torch.eye(3, device=w.device).repeat(n, 1, 1)
        rot[:, 0, 0], rot[:, 0, 1] = t[:, 0], -t[:, 1]
        rot[:, 1, 0], rot[:, 1, 1] = t[:, 1], t[:, 0]
        shift = torch.eye(3, device=w.device).repeat(n, 1, 1)
        shift[:, 0, 2], shift[:, 1, 2] = -t[:, 2], -t[:, 3]
        transforms = rot @ shift @ self.transform.unsqueeze(0)

        freqs = self.freqs.unsqueeze(0)
        phases = self.phases.unsqueeze(0) + (freqs @ transforms[:, :2, 2:]).squeeze(2)
        freqs = freqs @ transforms[:, :2, :2]
        # Fade out frequencies that the user transform pushed past the band limit.
        amplitudes = (1 - (freqs.norm(dim=2) - self.bandwidth) / (self.sampling_rate / 2 - self.bandwidth)).clamp(0, 1)

        sx, sy = int(self.size[0]), int(self.size[1])
        theta = torch.eye(2, 3, device=w.device)
        theta[0, 0] = 0.5 * sx / self.sampling_rate
        theta[1, 1] = 0.5 * sy / self.sampling_rate
        grid = F.affine_grid(theta.unsqueeze(0), [1, 1, sy, sx], align_corners=False)  # [1, H, W, 2]

        x = (grid.unsqueeze(3) @ freqs.permute(0, 2, 1).unsqueeze(1).unsqueeze(2)).squeeze(3)  # [N, H, W, C]
        x = torch.sin((x + phases.unsqueeze(1).unsqueeze(2)) * (2 * np.pi))
        x = x * amplitudes.unsqueeze(1).unsqueeze(2)
        x = x @ (self.weight / np.sqrt(self.channels)).t()
        return x.permute(0, 3, 1, 2)


class SynthesisLayer3(nn.Module):
    """Modulated convolution + filtered leaky ReLU with its own sampling rates, cutoffs
    and transition bands; the last one (``is_torgb``) is a 1x1 conv to RGB."""

    def __init__(
        self,
        w_dim: int,
        is_torgb: bool,
        is_critically_sampled: bool,
        use_fp16: bool,
        in_channels: int,
        out_channels: int,
        in_size: int,
        out_size: int,
        in_sampling_rate: float,
        out_sampling_rate: float,
        in_cutoff: float,
        out_cutoff: float,
        in_half_width: float,
        out_half_width: float,
        conv_kernel: int = 3,
        filter_size: int = 6,
        lrelu_upsampling: int = 2,
        use_radial_filters: bool = False,
        conv_clamp: float | None = 256,
        magnitude_ema_beta: float = 0.999,
    ) -> None:
        super().__init__()
        self.w_dim, self.is_torgb, self.is_critically_sampled = w_dim, is_torgb, is_critically_sampled
        self.use_fp16 = use_fp16
        self.in_channels, self.out_channels = in_channels, out_channels
        self.in_size = np.broadcast_to(np.asarray(in_size), [2]).astype(np.int64)
        self.out_size = np.broadcast_to(np.asarray(out_size), [2]).astype(np.int64)
        self.in_sampling_rate, self.out_sampling_rate = in_sampling_rate, out_sampling_rate
        self.tmp_sampling_rate = max(in_sampling_rate, out_sampling_rate) * (1 if is_torgb else lrelu_upsampling)
        self.in_cutoff, self.out_cutoff = in_cutoff, out_cutoff
        self.in_half_width, self.out_half_width = in_half_width, out_half_width
        self.conv_kernel = 1 if is_torgb else conv_kernel
        self.conv_clamp = conv_clamp
        self.magnitude_ema_beta = magnitude_ema_beta

        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, self.conv_kernel, self.conv_kernel]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.register_buffer("magnitude_ema", torch.ones([]))

        self.up_factor = int(np.rint(self.tmp_sampling_rate / in_sampling_rate))
        if in_sampling_rate * self.up_factor != self.tmp_sampling_rate:
            raise ValueError("StyleGAN3 layer sampling rates must be integer multiples of each other")
        self.up_taps = filter_size * self.up_factor if self.up_factor > 1 and not is_torgb else 1
        self.register_buffer("up_filter", design_lowpass_filter(
            self.up_taps, in_cutoff, in_half_width * 2, self.tmp_sampling_rate))

        self.down_factor = int(np.rint(self.tmp_sampling_rate / out_sampling_rate))
        if out_sampling_rate * self.down_factor != self.tmp_sampling_rate:
            raise ValueError("StyleGAN3 layer sampling rates must be integer multiples of each other")
        self.down_taps = filter_size * self.down_factor if self.down_factor > 1 and not is_torgb else 1
        self.down_radial = use_radial_filters and not is_critically_sampled
        self.register_buffer("down_filter", design_lowpass_filter(
            self.down_taps, out_cutoff, out_half_width * 2, self.tmp_sampling_rate, radial=self.down_radial))

        # Pad so that the output lands on the symmetric sample grid of the paper (App. C.3).
        pad_total = (self.out_size - 1) * self.down_factor + 1
        pad_total -= (self.in_size + self.conv_kernel - 1) * self.up_factor
        pad_total += self.up_taps + self.down_taps - 2
        pad_lo = (pad_total + self.up_factor) // 2
        pad_hi = pad_total - pad_lo
        self.padding = [int(pad_lo[0]), int(pad_hi[0]), int(pad_lo[1]), int(pad_hi[1])]

    def forward(self, x: Tensor, w: Tensor, force_fp32: bool = False, fused: bool = True,
                force_fp16: bool = False) -> Tensor:
        input_gain = self.magnitude_ema.rsqrt()
        styles = self.affine(w)
        if self.is_torgb:
            styles = styles * (1 / np.sqrt(self.in_channels * self.conv_kernel**2))
        use_fp16 = self.use_fp16 and not force_fp32 and (x.device.type == "cuda" or force_fp16)
        dtype = torch.float16 if use_fp16 else torch.float32
        x = modulated_conv2d_sg3(
            x.to(dtype), self.weight, styles, padding=self.conv_kernel - 1,
            demodulate=not self.is_torgb, input_gain=input_gain, fused=fused,
        )
        return filtered_lrelu(
            x, fu=self.up_filter, fd=self.down_filter, b=self.bias.to(x.dtype),
            up=self.up_factor, down=self.down_factor, padding=self.padding,
            gain=1 if self.is_torgb else np.sqrt(2), slope=1 if self.is_torgb else 0.2, clamp=self.conv_clamp,
        )

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
                f"in_size={list(self.in_size)}, out_size={list(self.out_size)}, "
                f"up={self.up_factor}, down={self.down_factor}, torgb={self.is_torgb}")


class SynthesisNetwork3(nn.Module):
    """w+ ``[N, num_layers + 2, w_dim]`` -> image, through the Fourier input and
    ``num_layers + 1`` synthesis layers named ``L{i}_{size}_{channels}``."""

    def __init__(
        self,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        channel_base: int = 32768,
        channel_max: int = 512,
        num_layers: int = 14,
        num_critical: int = 2,
        first_cutoff: float = 2,
        first_stopband: float = 2**2.1,
        last_stopband_rel: float = 2**0.3,
        margin_size: int = 10,
        output_scale: float = 0.25,
        num_fp16_res: int = 4,
        **layer_kwargs: Any,
    ) -> None:
        super().__init__()
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.num_ws = num_layers + 2
        self.num_layers, self.num_critical = num_layers, num_critical
        self.margin_size, self.output_scale, self.num_fp16_res = margin_size, output_scale, num_fp16_res

        # Cutoffs and stopbands grow geometrically up to the last (critically sampled) layers.
        last_cutoff = img_resolution / 2
        last_stopband = last_cutoff * last_stopband_rel
        exponents = np.minimum(np.arange(num_layers + 1) / (num_layers - num_critical), 1)
        cutoffs = first_cutoff * (last_cutoff / first_cutoff) ** exponents
        stopbands = first_stopband * (last_stopband / first_stopband) ** exponents
        sampling_rates = np.exp2(np.ceil(np.log2(np.minimum(stopbands * 2, img_resolution))))
        half_widths = np.maximum(stopbands, sampling_rates / 2) - cutoffs
        sizes = sampling_rates + margin_size * 2
        sizes[-2:] = img_resolution
        channels = np.rint(np.minimum((channel_base / 2) / cutoffs, channel_max))
        channels[-1] = img_channels

        self.input = SynthesisInput(
            w_dim=w_dim, channels=int(channels[0]), size=int(sizes[0]),
            sampling_rate=sampling_rates[0], bandwidth=cutoffs[0],
        )
        self.layer_names: list[str] = []
        for idx in range(num_layers + 1):
            prev = max(idx - 1, 0)
            layer = SynthesisLayer3(
                w_dim=w_dim,
                is_torgb=(idx == num_layers),
                is_critically_sampled=(idx >= num_layers - num_critical),
                use_fp16=bool(sampling_rates[idx] * (2**num_fp16_res) > img_resolution),
                in_channels=int(channels[prev]), out_channels=int(channels[idx]),
                in_size=int(sizes[prev]), out_size=int(sizes[idx]),
                in_sampling_rate=int(sampling_rates[prev]), out_sampling_rate=int(sampling_rates[idx]),
                in_cutoff=float(cutoffs[prev]), out_cutoff=float(cutoffs[idx]),
                in_half_width=float(half_widths[prev]), out_half_width=float(half_widths[idx]),
                **layer_kwargs,
            )
            name = f"L{idx}_{layer.out_size[0]}_{layer.out_channels}"
            setattr(self, name, layer)
            self.layer_names.append(name)

    def forward(
        self, ws: Tensor, noise_mode: str = "const", force_fp32: bool = False, fused_modconv: bool | None = None,
        force_fp16: bool = False, **_unused: Any,
    ) -> Tensor:
        """Render w+; ``noise_mode`` is accepted for API symmetry (StyleGAN3 has no noise).
        float16 layers run in float16 on CUDA unless ``force_fp32``; ``force_fp16`` runs
        them in float16 on other devices too (slow; for checking that path)."""
        check_noise_mode(noise_mode)
        if ws.ndim != 3 or ws.shape[1] != self.num_ws or ws.shape[2] != self.w_dim:
            raise ValueError(f"ws must have shape [N, {self.num_ws}, {self.w_dim}], got {tuple(ws.shape)}")
        if fused_modconv is None:
            fused_modconv = ws.shape[0] == 1 or ws.device.type != "cpu"
        ws_list = ws.to(torch.float32).unbind(dim=1)
        x = self.input(ws_list[0])
        for name, w in zip(self.layer_names, ws_list[1:]):
            x = getattr(self, name)(x, w, force_fp32=force_fp32, fused=fused_modconv, force_fp16=force_fp16)
        if self.output_scale != 1:
            x = x * self.output_scale
        return x.to(torch.float32)


class StyleGAN3Generator(StyleGAN2Generator):
    """Mapping + StyleGAN3 synthesis; constructor arguments are NVIDIA's (kept in
    :attr:`init_kwargs`). Config T vs R is just ``synthesis_kwargs``
    (``conv_kernel=1, use_radial_filters=True`` and doubled channels for R)."""

    synthesis_class = SynthesisNetwork3
    default_mapping_layers = 2
