"""Every kernel configuration the pack ships lowers and compiles for Hopper (sm_90a) with nvcc, on any machine."""

import pytest
import torch

pytestmark = pytest.mark.usefixtures("hopper_compiler")

WAN_DIMS = [(5120, 128), (1536, 128), (3072, 128)]  # 14B, 1.3B, 5B: (model dim, head dim)


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TILELANG_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "tilelang_cache"))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("head_dim", [128, 64])
@pytest.mark.parametrize("seq_kv", [32760, 512, 257], ids=["self", "text", "image"])
def test_attention_configs_compile(dtype, head_dim, seq_kv):
    from svi_infinity.kernels.attention import PINGPONG_BARRIERS, flash_attention_kernel

    kernel = flash_attention_kernel(1, 2, 1000, seq_kv, head_dim, dtype)  # the shipped config for this KV length
    source = kernel.get_kernel_source()
    assert "wgmma_ss" in source and "wgmma_rs" in source  # Hopper's async tensor-core MMAs, P from registers for PV
    assert "wait_wgmma<1>" in source  # S_j waited for alone: the softmax overlaps P_{j-1} V_{j-1}
    assert "tma_load" in source and "warpgroup_reg_alloc<240>" in source  # TMA producer, setmaxnreg for consumers
    assert f"__sync_thread_partial({PINGPONG_BARRIERS[0]}, 256)" in source  # the consumers' ping-pong


@pytest.mark.parametrize("dim, head_dim", WAN_DIMS)
def test_norm_kernels_compile(dim, head_dim):
    from svi_infinity.kernels.rmsnorm import rms_norm_kernel, rms_norm_rope_kernel

    assert "uint4" in rms_norm_kernel(4096, dim, torch.bfloat16, 1e-6).get_kernel_source()  # 16-byte loads
    fused = rms_norm_rope_kernel(1, 4096, dim, head_dim, torch.bfloat16, 1e-6).get_kernel_source()
    assert "*(uint4*)(Y + " in fused  # 16-byte stores of the rotated output


@pytest.mark.parametrize("dim", [dim for dim, _ in WAN_DIMS])
def test_fused_block_norm_kernels_compile(dim):
    from svi_infinity.kernels.layernorm import NormPlan, layer_norm_kernel

    from svi_infinity.kernels.layernorm import gated_residual_kernel

    residual = gated_residual_kernel(1, 4096, dim, torch.bfloat16).get_kernel_source()
    assert all(access in residual for access in ("*(uint4*)(X_out + ", "= *(uint4*)(X + ", "= *(uint4*)(Y + "))  # 16 bytes wide
    for plan in (NormPlan("none", True), NormPlan("gated", False), NormPlan("add", True)):
        source = layer_norm_kernel(1, 4096, dim, torch.bfloat16, 1e-6, plan).get_kernel_source()
        assert "*(uint4*)(Out + " in source  # 16-byte stores of the normed output
        assert ("*(uint4*)(X_out + " in source) == (plan.residual != "none")  # the updated stream only with a residual
