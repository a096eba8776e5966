"""Wan-like attention inputs for the 8-bit attention's quality checks (CPU tests, GPU tests and the benchmark).

Real Wan q/k come out of an RMSNorm over the model dim whose learned weights have a few large channels, and tokens
of a video are correlated with their neighbours and share per-channel offsets; v is a projection of the same hidden
states (offsets and correlation, no norm). `wan_like_qkv` builds that: per-channel offsets + noise smoothed over
neighbouring tokens + white noise; q and k RMS-normed over all heads and scaled by norm weights 1 +- 0.1 with
`outliers` channels per head at `outlier_gain`; `sharpness` scales q (the logits' spread). `iid_qkv` is the plain
N(0, 1) case, where V has no structure to average over and an e4m3 P.V costs cosine ~0.9993 whatever the kernel.
"""

import torch


def _structured(batch: int, seq: int, channels: int, generator: torch.Generator) -> torch.Tensor:
    device = generator.device
    offset = torch.randn(1, 1, channels, generator=generator, device=device)
    running = torch.randn(batch, seq + 16, channels, generator=generator, device=device).cumsum(1)
    smooth = (running[:, 16:] - running[:, :-16]) / 4  # sums over 16 neighbouring tokens / 4: unit variance
    return offset + smooth + 0.5 * torch.randn(batch, seq, channels, generator=generator, device=device)


def _norm_weight(heads: int, head_dim: int, outliers: int, gain: float, generator: torch.Generator) -> torch.Tensor:
    device = generator.device
    weight = 1 + 0.1 * torch.randn(heads, head_dim, generator=generator, device=device)
    for head in range(heads):
        weight[head, torch.randperm(head_dim, generator=generator, device=device)[:outliers]] = gain
    return weight.flatten()


def _rms_norm(x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


def wan_like_qkv(batch: int, seq_q: int, seq_kv: int, heads: int, head_dim: int, *, sharpness: float = 1.0,
                 outliers: int = 4, outlier_gain: float = 8.0, seed: int = 0, dtype=torch.bfloat16, device="cpu"):
    generator = torch.Generator(device=device).manual_seed(seed)  # drawn where used: real sizes are 0.7-1.5 GB each
    channels = heads * head_dim
    q = _rms_norm(_structured(batch, seq_q, channels, generator)) * _norm_weight(heads, head_dim, outliers, outlier_gain, generator)
    k = _rms_norm(_structured(batch, seq_kv, channels, generator)) * _norm_weight(heads, head_dim, outliers, outlier_gain, generator)
    v = _structured(batch, seq_kv, channels, generator)
    return tuple(t.to(device=device, dtype=dtype) for t in (q * sharpness, k, v))


def iid_qkv(batch: int, seq_q: int, seq_kv: int, heads: int, head_dim: int, *, seed: int = 0, dtype=torch.bfloat16,
            device="cpu"):
    generator = torch.Generator(device=device).manual_seed(seed)
    return tuple(torch.randn(batch, seq, heads * head_dim, generator=generator, device=device).to(dtype)
                 for seq in (seq_q, seq_kv, seq_kv))


def float32_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Attention in float32 through SDPA's memory-efficient kernel on CUDA (never the math one: at L 75600 its score
    matrix alone would be 0.9 TB), float64 on the CPU."""
    from svi_infinity.kernels.attention import attention_reference

    if not q.is_cuda:
        return attention_reference(q.double(), k.double(), v.double(), heads)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION]):
        return attention_reference(q.float(), k.float(), v.float(), heads)


def cosine_and_relative_l2(out: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    out, reference = out.double().flatten(), reference.double().flatten()
    cosine = (out @ reference / (out.norm() * reference.norm())).item()
    return cosine, ((out - reference).norm() / reference.norm()).item()
