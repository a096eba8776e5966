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


@pytest.mark.parametrize("head_dim", [128, 64])
@pytest.mark.parametrize("seq_kv", [32760, 512, 257], ids=["self", "text", "image"])
def test_8bit_attention_configs_compile(seq_kv, head_dim):
    """The shipped 8-bit schedule per KV length (`config_for`): INT8 wgmma for Q.K^T from shared memory, FP8 wgmma for
    P.V with P from registers, the row sums as P times a ones tile (m64n8) beside it, TMA producer, ping-pong, and the
    int32 -> float conversion done by an add of magic bits (no I2F on the conversion unit the exp2s need)."""
    from svi_infinity.kernels.attention_8bit import INT_MAGIC, attention_8bit_kernel

    source = attention_8bit_kernel(1, 2, 1000, seq_kv, head_dim, torch.bfloat16).get_kernel_source()
    assert "wgmma_ss<tl::DataType::kInt8, tl::DataType::kInt8, tl::DataType::kInt32" in source
    assert "wgmma_rs<tl::DataType::kFloat8_e4m3, tl::DataType::kFloat8_e4m3, tl::DataType::kFloat32" in source
    assert "kFloat32, 64, 8, 32" in source  # the ones-tile wgmma: every denominator summed on the tensor cores
    assert "wait_wgmma<2>" in source and "tma_load" in source and "warpgroup_reg_alloc<240>" in source
    assert "__sync_thread_partial(5, 256)" in source
    assert f"+ {INT_MAGIC};" in source and "(float)" not in source
    assert "__nv_cvt_float2_to_fp8x2" in source  # P to e4m3 two at a time, straight into the A-operand registers


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("seq_q, seq_kv", [(32760, 32760), (32760, 257)], ids=["self", "image"])
def test_8bit_quantisation_kernels_compile(seq_q, seq_kv, dtype):
    from svi_infinity.kernels.attention_8bit import kernel_jobs

    jobs = kernel_jobs(1, 40, seq_q, seq_kv, 128, dtype)
    sources = {label.split(" 1x")[0]: builder(*args).get_kernel_source() for label, builder, args in jobs[:-1]}
    assert "tma_store" in sources["8-bit quantize"] and "nearbyintf" in sources["8-bit quantize"]  # V^T via TMA; ties to even
    assert "sqrtf" in sources["8-bit statistics finish"]  # the channel balance
    assert "tma_load" in sources["8-bit statistics"]  # the statistics pass streams its tiles


@pytest.mark.parametrize("dim", [dim for dim, _ in WAN_DIMS])
def test_fp8_row_kernels_compile(dim):
    """The fp8 GEMMs' feeders: each fused LayerNorm pass with e4m3 output, and the row quantisation (with the FFN's
    GELU at 13,824 wide): saturating e4m3 conversions, the scale stored per row, loads 16 bytes wide."""
    from svi_infinity.kernels.fp8_gemm import row_quant_kernel
    from svi_infinity.kernels.layernorm import NormPlan, layer_norm_kernel

    for plan in (NormPlan("none", True, True), NormPlan("gated", False, True), NormPlan("add", True, True)):
        source = layer_norm_kernel(1, 4096, dim, torch.bfloat16, 1e-6, plan).get_kernel_source()
        assert "__NV_SATFINITE, __NV_E4M3" in source and "fp8_e4_t* __restrict__ Out" in source
        assert "S[" in source and ("*(uint4*)(X_out + " in source) == (plan.residual != "none")
    for width, gelu in ((dim, False), (13824, True)):
        source = row_quant_kernel(4096, width, torch.bfloat16, gelu).get_kernel_source()
        assert "__NV_SATFINITE, __NV_E4M3" in source and "= *(uint4*)(X + " in source
        assert ("tanh" in source) == gelu
