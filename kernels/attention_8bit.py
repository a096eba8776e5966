"""8-bit attention for Wan on Hopper: INT8 Q.K^T, FP8 (e4m3) P.V, SageAttention-2-style, in TileLang.

Quantisation (`quantize_tilelang`: a statistics pass per tensor, a tiny combining kernel, then one pass over Q, K
and V together, all TileLang):
- Q and K balanced per (head, channel): q / alpha and k alpha with alpha = sqrt(amax|q| / amax|k - mean|), which
  leaves every logit as it was but takes large norm-weight channels' range away from the others.
- Q per token and head to int8 (scale = amax / 127); the softmax scale 1/sqrt(d) and log2(e) ride in its scale.
- K smoothed (the per-channel mean over all tokens subtracted: every query's logits move by a constant, which the
  softmax ignores), then int8 with one scale per KV tile and per group of keys that one thread of the consumer
  warpgroup holds in the wgmma accumulator (keys j with (j % 8) // 2 == g): a scalar per thread, like a per-block
  scale, but four times finer.
- V smoothed per channel (the mean goes back in at the end: the softmax weights sum to one), then FP8 e4m3 with one
  scale per channel, written transposed ([B, heads, d, keys]: wgmma reads an 8-bit B operand only K-major) and with
  its keys permuted within every 16 (`PV_PERMUTATION`) so that the QK^T accumulator registers are, as they stand,
  the FP8 A operand of the P.V wgmma (no register shuffle between the two matmuls).
The kernel is the bf16 kernel's FlashAttention-3 schedule (kernels/attention.py) with P scaled to e4m3's range (448)
and every KV tile's P.V accumulated into a fresh fragment that is then added into the fp32 output in registers
(Hopper's FP8 wgmma accumulates with fewer than fp32's bits; two-level accumulation keeps the sum in fp32). The
softmax denominators come from the tensor cores too, as P times a ones tile issued beside P.V and accumulated the same
way, so the CUDA cores, which bound this kernel, spend fewer instructions per score (no row-sum adds, no shuffles).
`attention_8bit_reference` emulates all of it in PyTorch; `attention_8bit` is the dispatch (bf16 path as fallback).
"""

import math
from dataclasses import dataclass

import torch

from .attention import BLOCK_M, CONSUMER_ROWS, LOG2_E, PINGPONG_BARRIERS, attention, schedule_macros
from .dispatch import Decision, compiled, dtype_name, kernel_problem

BACKEND = "tilelang 8-bit"  # the Decision backend of a call the 8-bit kernel ran

P_SCALE = 448.0  # largest e4m3 value: P (<= 1 after the max subtraction) is stored as P * 448
LOG2_P_SCALE = math.log2(P_SCALE)
INT_MAGIC = 0x4B400000  # bits of 1.5 * 2^23: int32 x (|x| < 2^22) + these bits, read as float, is 12582912 + x exactly
FLOAT_MAGIC = 12582912.0
MIN_KEYS = 2048  # below this (Wan's 512 text / 257 image keys) the bf16 kernels are faster: measured on the H200
K_GROUPS = 4  # key scale groups per KV tile: the accumulator columns one thread holds, (j % 8) // 2
SUM_COLUMNS = 8  # width of the ones tile that sums P's rows on the tensor cores (wgmma's smallest N)


def pv_permutation(j):
    """Key order of V^T within each 16 keys: column j of the P.V operand is key sigma(j) of the tile. The wgmma
    accumulator gives thread t%4 the columns 8g + 2(t%4) + {0, 1}; an 8-bit A operand wants 4(t%4) + {0..3} (+16):
    this is the map between them (SageAttention's [0, 1, 8, 9, 2, 3, 10, 11, ...]). Works on ints and TIR exprs."""
    return 16 * (j // 16) + 8 * ((j % 4) // 2) + 2 * ((j % 16) // 4) + j % 2


PV_PERMUTATION = [pv_permutation(j) for j in range(16)]


@dataclass(frozen=True)
class Attention8BitConfig:
    """One compiled 8-bit schedule; fields as in attention.AttentionConfig. block_n is also the K-scale tile (the
    quantisation pass and the kernel must agree on it)."""

    block_n: int = 128
    stages: int = 2
    q_tiles_per_cta: int = 1
    pingpong: bool = True


SELF_ATTENTION_8BIT = Attention8BitConfig()
CROSS_ATTENTION_8BIT = Attention8BitConfig(q_tiles_per_cta=4)


def config_for(seq_kv: int) -> Attention8BitConfig:
    return CROSS_ATTENTION_8BIT if seq_kv <= 1024 else SELF_ATTENTION_8BIT


def _attention_8bit_program(batch: int, heads: int, seq_q: int, seq_kv: int, head_dim: int, out_dtype: str,
                            config: Attention8BitConfig):
    import tilelang.language as T

    block_n, stages, tiles_per_cta = config.block_n, config.stages, config.q_tiles_per_cta
    rows = CONSUMER_ROWS
    accum = "float32"
    q_shape, kv_shape = [batch, seq_q, heads * head_dim], [batch, seq_kv, heads * head_dim]
    kv_tiles = -(-seq_kv // block_n)
    q_tiles = -(-seq_q // BLOCK_M)
    q_stages = min(2, tiles_per_cta)
    pingpong = config.pingpong
    fp8 = "float8_e4m3fn"
    mask_tail, take_turn, pass_turn = schedule_macros(seq_kv, block_n, pingpong)

    @T.macro
    def load_k_scale(k_scale, KS, b, head, kv):
        """This tile's key-group scales, loaded before its Q.K^T is issued so the load hides under the matmul."""
        for g in T.Parallel(K_GROUPS):
            k_scale[g] = KS[b, head, kv * K_GROUPS + g]

    @T.macro
    def dequantize(s_int, scores, q_scale, k_scale):
        """scores = s_int * q_scale[i] * k_scale[group of j]: int32 to float without the conversion unit (the
        magic-number bits read as float are s + 1.5 * 2^23 exactly), the subtraction folded into one FMA."""
        for i, j in T.Parallel(rows, block_n):
            scores[i, j] = T.reinterpret(s_int[i, j] + INT_MAGIC, accum) * (q_scale[i] * k_scale[(j % 8) // 2]) - (
                FLOAT_MAGIC * (q_scale[i] * k_scale[(j % 8) // 2]))

    @T.macro
    def add_tile_sums(sums, tile_sums, rescale):
        """sums = sums * rescale + a tile's row sums of P (the ones-tile matmul: its 8 columns hold the same sum, two
        for each thread of a row's quad, so every thread has its rows' denominators without a shuffle)."""
        for i, j in T.Parallel(rows, SUM_COLUMNS):
            sums[i, j] = sums[i, j] * rescale[i] + tile_sums[i, j]

    @T.macro
    def consumer(me, O, QS, KS, VS, VM, q_tiles_smem, k_tiles, v_tiles, ones, o_tile, q_full, q_empty, k_full, k_empty,
                 v_full, v_empty, b, bx, head, s_int, scores, probs, acc, pv, sums, tile_sums, k_scale, q_scale, row_max,
                 row_max_prev, rescale, prev_rescale, shift):
        T.set_max_nreg(240, 1)
        first_row = me * rows
        column = head * head_dim
        for t in T.serial(tiles_per_cta):
            q_index = bx * tiles_per_cta + t
            if q_index < q_tiles:
                qs = t % q_stages
                base = t * kv_tiles
                start = q_index * BLOCK_M + first_row
                for i in T.Parallel(rows):
                    q_scale[i] = QS[b, head, start + i]
                load_k_scale(k_scale, KS, b, head, 0)
                T.barrier_wait(q_full[qs], (t // q_stages) & 1)
                T.barrier_wait(k_full[base % stages], (base // stages) & 1)
                take_turn(me)
                T.wgmma_gemm(q_tiles_smem[qs, first_row:first_row + rows, :], k_tiles[base % stages, :, :], s_int,
                             transpose_B=True, clear_accum=True)
                pass_turn(me)
                T.wait_wgmma(0)
                T.barrier_arrive(k_empty[base % stages])
                if kv_tiles == 1:
                    T.barrier_arrive(q_empty[qs])
                dequantize(s_int, scores, q_scale, k_scale)
                mask_tail(scores, 0)
                T.reduce_max(scores, row_max, dim=1, clear=True)
                for i in T.Parallel(rows):
                    shift[i] = row_max[i] - LOG2_P_SCALE
                for i, j in T.Parallel(rows, block_n):
                    scores[i, j] = T.exp2(scores[i, j] - shift[i])
                for i, j in T.Parallel(rows, block_n):
                    probs[i, j] = scores[i, pv_permutation(j)]
                T.fill(acc, 0)
                T.fill(sums, 0)
                T.fill(prev_rescale, 0)
                for kv in T.serial(1, kv_tiles):
                    now, before = (base + kv) % stages, (base + kv - 1) % stages
                    load_k_scale(k_scale, KS, b, head, kv)
                    T.barrier_wait(k_full[now], ((base + kv) // stages) & 1)
                    take_turn(me)
                    T.wgmma_gemm(q_tiles_smem[qs, first_row:first_row + rows, :], k_tiles[now, :, :], s_int,
                                 transpose_B=True, clear_accum=True)
                    T.barrier_wait(v_full[before], ((base + kv - 1) // stages) & 1)
                    T.wgmma_gemm(probs, v_tiles[before, :, :], pv, transpose_B=True, clear_accum=True)
                    T.wgmma_gemm(probs, ones, tile_sums, transpose_B=True, clear_accum=True)
                    pass_turn(me)
                    T.wait_wgmma(2)  # Q.K^T done; P.V and the row sums still running
                    T.barrier_arrive(k_empty[now])
                    if kv == kv_tiles - 1:
                        T.barrier_arrive(q_empty[qs])
                    dequantize(s_int, scores, q_scale, k_scale)
                    mask_tail(scores, kv)
                    T.copy(row_max, row_max_prev)
                    T.reduce_max(scores, row_max, dim=1, clear=False)
                    for i in T.Parallel(rows):
                        rescale[i] = T.exp2(row_max_prev[i] - row_max[i])
                        shift[i] = row_max[i] - LOG2_P_SCALE
                    for i, j in T.Parallel(rows, block_n):
                        scores[i, j] = T.exp2(scores[i, j] - shift[i])
                    T.wait_wgmma(0)
                    T.barrier_arrive(v_empty[before])
                    for i, j in T.Parallel(rows, head_dim):
                        acc[i, j] = acc[i, j] * prev_rescale[i] + pv[i, j]
                    add_tile_sums(sums, tile_sums, prev_rescale)
                    T.copy(rescale, prev_rescale)
                    for i, j in T.Parallel(rows, block_n):
                        probs[i, j] = scores[i, pv_permutation(j)]
                last = (base + kv_tiles - 1) % stages
                T.barrier_wait(v_full[last], ((base + kv_tiles - 1) // stages) & 1)
                take_turn(me)
                T.wgmma_gemm(probs, v_tiles[last, :, :], pv, transpose_B=True, clear_accum=True)
                T.wgmma_gemm(probs, ones, tile_sums, transpose_B=True, clear_accum=True)
                if me == 0:
                    pass_turn(me)
                elif q_index < T.min(bx * tiles_per_cta + tiles_per_cta, q_tiles) - 1:
                    pass_turn(me)  # not after its last tile: consumer 1 opened with an extra turn for consumer 0
                T.wait_wgmma(0)
                T.barrier_arrive(v_empty[last])
                add_tile_sums(sums, tile_sums, prev_rescale)
                for i, j in T.Parallel(rows, head_dim):  # sums[i, j % 8]: the copy this thread holds
                    o_tile[i, j] = (acc[i, j] * prev_rescale[i] + pv[i, j]) / sums[i, j % SUM_COLUMNS] * VS[b, head, j] + VM[b, head, j]
                T.copy(o_tile, O[b, start:start + rows, column:column + head_dim])

    @T.prim_func
    def attention_8bit(Q: T.Tensor(q_shape, "int8"), K: T.Tensor(kv_shape, "int8"),
                       Vt: T.Tensor([batch, heads, head_dim, kv_tiles * block_n], fp8),
                       QS: T.Tensor([batch, heads, q_tiles * BLOCK_M], accum), KS: T.Tensor([batch, heads, kv_tiles * K_GROUPS], accum),
                       VS: T.Tensor([batch, heads, head_dim], accum), VM: T.Tensor([batch, heads, head_dim], accum),
                       O: T.Tensor(q_shape, out_dtype)):
        with T.Kernel(T.ceildiv(q_tiles, tiles_per_cta), heads, batch, threads=384) as (bx, head, b):
            q_tiles_smem = T.alloc_shared([q_stages, BLOCK_M, head_dim], "int8")
            k_tiles = T.alloc_shared([stages, block_n, head_dim], "int8")
            v_tiles = T.alloc_shared([stages, head_dim, block_n], fp8)
            o_tile_0, o_tile_1 = T.alloc_fragment([rows, head_dim], out_dtype), T.alloc_fragment([rows, head_dim], out_dtype)
            ones = T.alloc_shared([SUM_COLUMNS, block_n], fp8)
            buffers = [[T.alloc_fragment([rows, block_n], "int32"), T.alloc_fragment([rows, block_n], accum),
                        T.alloc_fragment([rows, block_n], fp8), T.alloc_fragment([rows, head_dim], accum),
                        T.alloc_fragment([rows, head_dim], accum), T.alloc_fragment([rows, SUM_COLUMNS], accum),
                        T.alloc_fragment([rows, SUM_COLUMNS], accum), T.alloc_fragment([K_GROUPS], accum)]
                       + [T.alloc_fragment([rows], accum) for _ in range(6)] for _ in range(2)]
            q_full = T.alloc_barrier(arrive_count=[128] * q_stages)
            q_empty = T.alloc_barrier(arrive_count=[256] * q_stages)
            k_full = T.alloc_barrier(arrive_count=[128] * stages)
            v_full = T.alloc_barrier(arrive_count=[128] * stages)
            k_empty = T.alloc_barrier(arrive_count=[256] * stages)
            v_empty = T.alloc_barrier(arrive_count=[256] * stages)
            column = head * head_dim
            shared = (q_tiles_smem, k_tiles, v_tiles, ones)
            bars = (q_full, q_empty, k_full, k_empty, v_full, v_empty)
            tx = T.get_thread_binding()
            if tx < 128:
                consumer(0, O, QS, KS, VS, VM, *shared, o_tile_0, *bars, b, bx, head, *buffers[0])
            elif tx < 256:
                if pingpong:
                    T.named_barrier_arrive(PINGPONG_BARRIERS[0], 256)  # consumer 0 issues first
                consumer(1, O, QS, KS, VS, VM, *shared, o_tile_1, *bars, b, bx, head, *buffers[1])
            else:
                T.set_max_nreg(24, 0)
                T.fill(ones, 1)  # before the first V tile's barrier, which the consumers wait on
                T.fence_proxy_async()  # written by threads, read by wgmma
                for t in T.serial(tiles_per_cta):
                    q_index = bx * tiles_per_cta + t
                    if q_index < q_tiles:
                        qs = t % q_stages
                        T.barrier_wait(q_empty[qs], ((t // q_stages) & 1) ^ 1)
                        T.tma_copy(Q[b, q_index * BLOCK_M:(q_index + 1) * BLOCK_M, column:column + head_dim],
                                   q_tiles_smem[qs, :, :], barrier=q_full[qs])
                        T.barrier_arrive(q_full[qs])
                        for kv in T.serial(kv_tiles):
                            g = t * kv_tiles + kv
                            stage = g % stages
                            T.barrier_wait(k_empty[stage], ((g // stages) & 1) ^ 1)
                            T.tma_copy(K[b, kv * block_n:(kv + 1) * block_n, column:column + head_dim],
                                       k_tiles[stage, :, :], barrier=k_full[stage])
                            T.barrier_arrive(k_full[stage])
                            T.barrier_wait(v_empty[stage], ((g // stages) & 1) ^ 1)
                            T.tma_copy(Vt[b, head, :, kv * block_n:(kv + 1) * block_n], v_tiles[stage, :, :],
                                       barrier=v_full[stage])
                            T.barrier_arrive(v_full[stage])

    return attention_8bit


def attention_8bit_kernel(batch: int, heads: int, seq_q: int, seq_kv: int, head_dim: int, out_dtype: torch.dtype,
                          config: Attention8BitConfig | None = None):
    config = config or config_for(seq_kv)
    return compiled(("attention_8bit", batch, heads, seq_q, seq_kv, head_dim, out_dtype, config),
                    lambda: _attention_8bit_program(batch, heads, seq_q, seq_kv, head_dim, dtype_name(out_dtype), config))


QUANT_ROWS = 128  # tokens per quantisation tile: one query tile, one KV tile (the K-scale groups live within it)
STATS_ROWS = 64  # tokens per step of the channel statistics pass
STATS_STEPS = 8  # steps per statistics CTA: 512 tokens, ~2,500 CTAs per tensor at 14B 480p
TINY = 1e-30  # amax floor: an all-zero row or channel quantises to zeros instead of 0 * inf
SUM, MAX, MIN = 0, 1, 2  # rows of a statistics tensor


def stats_splits(seq: int) -> int:
    return -(-seq // (STATS_ROWS * STATS_STEPS))


def _channel_stats_program(batch: int, heads: int, seq: int, head_dim: int, dtype: str):
    """Per (batch, head, channel) sum, max and min of X over 512 tokens (one CTA each): Stats[SUM / MAX / MIN, b, head,
    split, channel]. `_finish_stats_program` combines the splits; partials instead of atomics keep it deterministic."""
    import tilelang.language as T

    rows, steps = STATS_ROWS, STATS_STEPS
    splits = stats_splits(seq)
    accum = "float32"
    inf = T.infinity(accum)

    @T.prim_func
    def channel_stats(X: T.Tensor([batch, seq, heads * head_dim], dtype),
                      Stats: T.Tensor([3, batch, heads, splits, head_dim], accum)):
        with T.Kernel(splits, heads, batch, threads=256) as (split, head, b):
            column = head * head_dim
            tile = T.alloc_shared([rows, head_dim], dtype)
            total = T.alloc_fragment([rows, head_dim], accum)
            high = T.alloc_fragment([rows, head_dim], accum)
            low = T.alloc_fragment([rows, head_dim], accum)
            out = T.alloc_fragment([head_dim], accum)
            T.fill(total, 0)
            T.fill(high, -inf)
            T.fill(low, inf)
            for step in T.Pipelined(steps, num_stages=2):
                first = (split * steps + step) * rows
                T.copy(X[b, first:first + rows, column:column + head_dim], tile)
                for i, j in T.Parallel(rows, head_dim):
                    inside = first + i < seq
                    total[i, j] += T.if_then_else(inside, T.Cast(accum, tile[i, j]), 0)
                    high[i, j] = T.max(high[i, j], T.if_then_else(inside, T.Cast(accum, tile[i, j]), -inf))
                    low[i, j] = T.min(low[i, j], T.if_then_else(inside, T.Cast(accum, tile[i, j]), inf))
            T.reduce_sum(total, out, dim=0)
            T.copy(out, Stats[SUM, b, head, split, :])
            T.reduce_max(high, out, dim=0)
            T.copy(out, Stats[MAX, b, head, split, :])
            T.reduce_min(low, out, dim=0)
            T.copy(out, Stats[MIN, b, head, split, :])

    return channel_stats


def _finish_stats_program(batch: int, heads: int, seq_q: int, seq_kv: int, head_dim: int):
    """Per (batch, head, channel), from the statistics of Q, K and V:
    - K's mean (the smoothing; the kernel's logits move by q.mean, which the softmax ignores);
    - the channel balance alpha = sqrt(amax|q| / amax|k - mean|): Q is quantised as q / alpha and K as (k - mean) alpha,
      which leaves every logit as it was but gives both the same range per channel, so a few large channels in the
      q or k norm weights no longer take the int8 range from all the others (SmoothQuant's migration, per head);
    - V's mean and e4m3 scale (V - mean spans +-amax and is stored as x 448 / amax)."""
    import tilelang.language as T

    q_splits, kv_splits = stats_splits(seq_q), stats_splits(seq_kv)
    channels = [batch, heads, head_dim]
    accum = "float32"

    @T.prim_func
    def finish_stats(QStats: T.Tensor([3, batch, heads, q_splits, head_dim], accum),
                     KStats: T.Tensor([3, batch, heads, kv_splits, head_dim], accum),
                     VStats: T.Tensor([3, batch, heads, kv_splits, head_dim], accum),
                     KMean: T.Tensor(channels, accum), QFactor: T.Tensor(channels, accum), KFactor: T.Tensor(channels, accum),
                     VMean: T.Tensor(channels, accum), VScale: T.Tensor(channels, accum), VInverse: T.Tensor(channels, accum)):
        with T.Kernel(heads, batch, threads=head_dim) as (head, b):
            d = T.get_thread_binding()
            q_high = T.alloc_var(accum, init=-T.infinity(accum))
            q_low = T.alloc_var(accum, init=T.infinity(accum))
            k_sum = T.alloc_var(accum, init=0)
            k_high = T.alloc_var(accum, init=-T.infinity(accum))
            k_low = T.alloc_var(accum, init=T.infinity(accum))
            v_sum = T.alloc_var(accum, init=0)
            v_high = T.alloc_var(accum, init=-T.infinity(accum))
            v_low = T.alloc_var(accum, init=T.infinity(accum))
            for s in T.serial(q_splits):
                q_high = T.max(q_high, QStats[MAX, b, head, s, d])
                q_low = T.min(q_low, QStats[MIN, b, head, s, d])
            for s in T.serial(kv_splits):
                k_sum += KStats[SUM, b, head, s, d]
                k_high = T.max(k_high, KStats[MAX, b, head, s, d])
                k_low = T.min(k_low, KStats[MIN, b, head, s, d])
                v_sum += VStats[SUM, b, head, s, d]
                v_high = T.max(v_high, VStats[MAX, b, head, s, d])
                v_low = T.min(v_low, VStats[MIN, b, head, s, d])
            k_mean = k_sum / seq_kv
            v_mean = v_sum / seq_kv
            alpha = T.sqrt(T.max(T.max(q_high, -q_low), TINY) / T.max(T.max(k_high - k_mean, k_mean - k_low), TINY))
            v_amax = T.max(T.max(v_high - v_mean, v_mean - v_low), TINY)
            KMean[b, head, d] = k_mean
            QFactor[b, head, d] = 1 / alpha
            KFactor[b, head, d] = alpha
            VMean[b, head, d] = v_mean
            VScale[b, head, d] = v_amax / P_SCALE
            VInverse[b, head, d] = P_SCALE / v_amax

    return finish_stats


def _quantize_program(batch: int, heads: int, seq_q: int, seq_kv: int, head_dim: int, dtype: str):
    """One pass over Q, K and V (a CTA per 128-token tile of each): q / alpha to int8 per token, with the softmax scale
    and log2(e) in its scale; (k - mean) alpha to int8 with a scale per (KV tile, key group); (v - mean) 448 / amax to
    e4m3, transposed to [B, heads, d, keys] with the keys of every 16 in PV_PERMUTATION order and zeros past the end."""
    import tilelang.language as T

    rows = QUANT_ROWS
    q_tiles, kv_tiles = -(-seq_q // rows), -(-seq_kv // rows)
    q_shape, kv_shape = [batch, seq_q, heads * head_dim], [batch, seq_kv, heads * head_dim]
    channels = [batch, heads, head_dim]
    accum, fp8 = "float32", "float8_e4m3fn"
    logit_scale = LOG2_E / math.sqrt(head_dim)

    @T.prim_func
    def quantize(Q: T.Tensor(q_shape, dtype), K: T.Tensor(kv_shape, dtype), V: T.Tensor(kv_shape, dtype),
                 KMean: T.Tensor(channels, accum), QFactor: T.Tensor(channels, accum), KFactor: T.Tensor(channels, accum),
                 VMean: T.Tensor(channels, accum), VInverse: T.Tensor(channels, accum),
                 Q8: T.Tensor(q_shape, "int8"), QS: T.Tensor([batch, heads, q_tiles * rows], accum),
                 K8: T.Tensor(kv_shape, "int8"), KS: T.Tensor([batch, heads, kv_tiles * K_GROUPS], accum),
                 Vt: T.Tensor([batch, heads, head_dim, kv_tiles * rows], fp8)):
        with T.Kernel(max(q_tiles, kv_tiles), heads, batch, threads=256) as (tile, head, b):
            column = head * head_dim
            first = tile * rows
            x = T.alloc_fragment([rows, head_dim], accum)
            x8 = T.alloc_fragment([rows, head_dim], "int8")
            row_amax = T.alloc_fragment([rows], accum)
            inverse = T.alloc_fragment([rows], accum)
            row_amax_shared = T.alloc_shared([rows], accum)
            group_amax = T.alloc_shared([K_GROUPS], accum)
            v_tile = T.alloc_shared([rows, head_dim], dtype)
            vt_tile = T.alloc_shared([head_dim, rows], fp8)
            if tile < q_tiles:
                for i, j in T.Parallel(rows, head_dim):
                    x[i, j] = T.if_then_else(first + i < seq_q, T.Cast(accum, Q[b, first + i, column + j]) * QFactor[b, head, j], 0)
                T.reduce_absmax(x, row_amax, dim=1)
                for i in T.Parallel(rows):
                    inverse[i] = 127 / T.max(row_amax[i], TINY)
                    QS[b, head, first + i] = row_amax[i] * (logit_scale / 127)
                for i, j in T.Parallel(rows, head_dim):
                    x8[i, j] = T.Cast("int8", T.round(x[i, j] * inverse[i]))
                T.copy(x8, Q8[b, first:first + rows, column:column + head_dim])
            if tile < kv_tiles:
                for i, j in T.Parallel(rows, head_dim):
                    x[i, j] = T.if_then_else(first + i < seq_kv, (T.Cast(accum, K[b, first + i, column + j]) - KMean[b, head, j])
                                             * KFactor[b, head, j], 0)
                T.reduce_absmax(x, row_amax, dim=1)
                T.copy(row_amax, row_amax_shared)
                for g in T.Parallel(K_GROUPS):
                    group_amax[g] = 0
                    for r in T.serial(rows // K_GROUPS):
                        group_amax[g] = T.max(group_amax[g], row_amax_shared[8 * (r // 2) + 2 * g + r % 2])
                    KS[b, head, tile * K_GROUPS + g] = group_amax[g] / 127
                for i in T.Parallel(rows):
                    inverse[i] = 127 / T.max(group_amax[(i % 8) // 2], TINY)
                for i, j in T.Parallel(rows, head_dim):
                    x8[i, j] = T.Cast("int8", T.round(x[i, j] * inverse[i]))
                T.copy(x8, K8[b, first:first + rows, column:column + head_dim])
                T.copy(V[b, first:first + rows, column:column + head_dim], v_tile)
                for j, i in T.Parallel(head_dim, rows):
                    key = pv_permutation(i)
                    vt_tile[j, i] = T.Cast(fp8, T.if_then_else(
                        first + key < seq_kv, (T.Cast(accum, v_tile[key, j]) - VMean[b, head, j]) * VInverse[b, head, j], 0))
                T.copy(vt_tile, Vt[b, head, :, first:first + rows])

    return quantize


def channel_stats_kernel(batch: int, heads: int, seq: int, head_dim: int, dtype: torch.dtype):
    return compiled(("attention_8bit_channel_stats", batch, heads, seq, head_dim, dtype),
                    lambda: _channel_stats_program(batch, heads, seq, head_dim, dtype_name(dtype)))


def finish_stats_kernel(batch: int, heads: int, seq_q: int, seq_kv: int, head_dim: int):
    return compiled(("attention_8bit_finish_stats", batch, heads, seq_q, seq_kv, head_dim),
                    lambda: _finish_stats_program(batch, heads, seq_q, seq_kv, head_dim))


def quantize_kernel(batch: int, heads: int, seq_q: int, seq_kv: int, head_dim: int, dtype: torch.dtype):
    return compiled(("attention_8bit_quantize", batch, heads, seq_q, seq_kv, head_dim, dtype),
                    lambda: _quantize_program(batch, heads, seq_q, seq_kv, head_dim, dtype_name(dtype)))


def kernel_jobs(batch: int, heads: int, seq_q: int, seq_kv: int, head_dim: int, dtype: torch.dtype,
                config: Attention8BitConfig | None = None) -> list[tuple]:
    """(label, builder, args) of every kernel one 8-bit attention call of this shape runs (what precompile builds)."""
    shape = f"{batch}x{seq_q} over {seq_kv}"
    jobs = [(f"8-bit statistics {batch}x{seq}", channel_stats_kernel, (batch, heads, seq, head_dim, dtype))
            for seq in dict.fromkeys((seq_q, seq_kv))]
    return jobs + [(f"8-bit statistics finish {shape}", finish_stats_kernel, (batch, heads, seq_q, seq_kv, head_dim)),
                   (f"8-bit quantize {shape}", quantize_kernel, (batch, heads, seq_q, seq_kv, head_dim, dtype)),
                   (f"8-bit attention {shape}", attention_8bit_kernel, (batch, heads, seq_q, seq_kv, head_dim, dtype, config))]


@dataclass
class Quantized:
    """Q, K, V as the 8-bit kernel reads them (layouts in _quantize_program's docstring)."""

    q8: torch.Tensor  # [B, Sq, heads * d] int8, q / alpha
    q_scale: torch.Tensor  # [B, heads, Sq rounded up to 128] fp32, times log2(e) / sqrt(d)
    k8: torch.Tensor  # [B, Skv, heads * d] int8, (k - mean) alpha
    k_scale: torch.Tensor  # [B, heads, KV tiles * 4] fp32
    vt: torch.Tensor  # [B, heads, d, Skv rounded up to 128] e4m3, (V - mean) * 448 / amax, keys permuted per 16
    v_scale: torch.Tensor  # [B, heads, d] fp32, amax / 448
    v_mean: torch.Tensor  # [B, heads, d] fp32


def quantize_tilelang(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> Quantized:
    b, sq, c = q.shape
    skv, d = k.shape[1], c // heads
    q_stats, kv_stats = channel_stats_kernel(b, heads, sq, d, q.dtype), channel_stats_kernel(b, heads, skv, d, q.dtype)
    finish, quantize = finish_stats_kernel(b, heads, sq, skv, d), quantize_kernel(b, heads, sq, skv, d, q.dtype)
    device, f32 = q.device, torch.float32
    stats = {}
    for name, x, kernel in (("q", q, q_stats), ("k", k, kv_stats), ("v", v, kv_stats)):
        stats[name] = torch.empty(3, b, heads, stats_splits(x.shape[1]), d, device=device, dtype=f32)
        kernel(x, stats[name])
    k_mean, q_factor, k_factor, v_mean, v_scale, v_inverse = (torch.empty(b, heads, d, device=device, dtype=f32) for _ in range(6))
    finish(stats["q"], stats["k"], stats["v"], k_mean, q_factor, k_factor, v_mean, v_scale, v_inverse)
    q_tiles, kv_tiles = -(-sq // QUANT_ROWS), -(-skv // QUANT_ROWS)
    q8, k8 = torch.empty(q.shape, device=device, dtype=torch.int8), torch.empty(k.shape, device=device, dtype=torch.int8)
    q_scale = torch.empty(b, heads, q_tiles * QUANT_ROWS, device=device, dtype=f32)
    k_scale = torch.empty(b, heads, kv_tiles * K_GROUPS, device=device, dtype=f32)
    vt = torch.empty(b, heads, d, kv_tiles * QUANT_ROWS, device=device, dtype=torch.float8_e4m3fn)
    quantize(q, k, v, k_mean, q_factor, k_factor, v_mean, v_inverse, q8, q_scale, k8, k_scale, vt)
    return Quantized(q8, q_scale, k8, k_scale, vt, v_scale, v_mean)


def attention_8bit_quantized(quantized: Quantized, heads: int, seq_kv: int, out_dtype: torch.dtype,
                             config: Attention8BitConfig | None = None) -> torch.Tensor:
    """The attention kernel alone, on already quantised inputs (the benchmark times it apart from the quantisation)."""
    b, sq, c = quantized.q8.shape
    out = torch.empty(b, sq, c, device=quantized.q8.device, dtype=out_dtype)
    attention_8bit_kernel(b, heads, sq, seq_kv, c // heads, out_dtype, config)(
        quantized.q8, quantized.k8, quantized.vt, quantized.q_scale, quantized.k_scale, quantized.v_scale,
        quantized.v_mean, out)
    return out


def attention_8bit_tilelang(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                            config: Attention8BitConfig | None = None) -> torch.Tensor:
    return attention_8bit_quantized(quantize_tilelang(q, k, v, heads), heads, k.shape[1], q.dtype, config)


def _pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    return torch.nn.functional.pad(x, (0, 0) * (x.ndim - 2) + (0, rows - x.shape[1]))


def _value_order(device) -> torch.Tensor:
    """Token index of every V^T column within one 128-token tile."""
    return torch.tensor([16 * (j // 16) + PV_PERMUTATION[j % 16] for j in range(QUANT_ROWS)], device=device)


def quantize_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> Quantized:
    """The quantisation passes in PyTorch, operation for operation in float32 (rounding ties to even, e4m3 saturating)."""
    b, sq, c = q.shape
    skv, d = k.shape[1], c // heads
    q_tiles, kv_tiles = -(-sq // QUANT_ROWS), -(-skv // QUANT_ROWS)
    f32, device = torch.float32, q.device
    qh, kh, vh = (t.view(b, t.shape[1], heads, d).to(f32) for t in (q, k, v))
    tiny = torch.tensor(TINY, device=device)
    k_mean, v_mean = kh.sum(1) / skv, vh.sum(1) / skv  # [B, heads, d]
    q_amax = torch.maximum(qh.amax(1), -qh.amin(1))
    k_amax = torch.maximum(kh.amax(1) - k_mean, k_mean - kh.amin(1))
    alpha = torch.sqrt(torch.maximum(q_amax, tiny) / torch.maximum(k_amax, tiny))

    qb = qh * (1 / alpha)[:, None]
    token_amax = qb.abs().amax(-1)  # [B, Sq, heads]
    q8 = torch.round(qb * (127 / torch.maximum(token_amax, tiny))[..., None]).to(torch.int8)
    q_scale = _pad_rows(token_amax * (LOG2_E / math.sqrt(d) / 127), q_tiles * QUANT_ROWS).transpose(1, 2)

    kb = _pad_rows((kh - k_mean[:, None]) * alpha[:, None], kv_tiles * QUANT_ROWS)
    row_amax = kb.abs().amax(-1).view(b, kv_tiles, QUANT_ROWS // 8, K_GROUPS, 2, heads)
    group_amax = row_amax.amax(dim=(2, 4))  # [B, KV tiles, 4, heads]
    k_scale = (group_amax / 127).permute(0, 3, 1, 2).reshape(b, heads, kv_tiles * K_GROUPS).contiguous()  # the kernels' layout
    rows = torch.arange(kv_tiles * QUANT_ROWS, device=device)
    row_inverse = 127 / torch.maximum(group_amax[:, rows // QUANT_ROWS, (rows % 8) // 2], tiny)
    k8 = torch.round(kb * row_inverse[..., None])[:, :skv].to(torch.int8)

    v_amax = torch.maximum(torch.maximum(vh.amax(1) - v_mean, v_mean - vh.amin(1)), tiny)
    v8 = _pad_rows(((vh - v_mean[:, None]) * (P_SCALE / v_amax)[:, None]).to(torch.float8_e4m3fn), kv_tiles * QUANT_ROWS)
    keys = (torch.arange(kv_tiles, device=device)[:, None] * QUANT_ROWS + _value_order(device)).flatten()
    vt = v8[:, keys].permute(0, 2, 3, 1).contiguous()  # [B, heads, d, keys]
    return Quantized(q8.view(b, sq, c), q_scale.contiguous(), k8.reshape(b, skv, c), k_scale, vt, v_amax / P_SCALE, v_mean)


def attention_from_quantized(quantized: Quantized, heads: int, seq_kv: int, out_dtype: torch.dtype,
                             block_n: int = 128) -> torch.Tensor:
    """The kernel's arithmetic in PyTorch: exact integer Q.K^T, the same per-tile online softmax with P stored as
    e4m3 x 448 against the running max, each tile's P.V and row sums of that P added into fp32 accumulators (exp2 is
    exact here where the kernel's is ex2.approx)."""
    b, sq, c = quantized.q8.shape
    d = c // heads
    f32 = torch.float32
    kv_tiles = -(-seq_kv // block_n)
    inverse_order = torch.argsort(_value_order(quantized.vt.device))
    tiles = quantized.vt.shape[-1] // QUANT_ROWS
    keys = (torch.arange(tiles, device=quantized.vt.device)[:, None] * QUANT_ROWS + inverse_order).flatten()
    v8 = quantized.vt[..., keys].to(f32).transpose(2, 3)  # [B, heads, keys (padded), d], keys in order
    q8 = quantized.q8.view(b, sq, heads, d).transpose(1, 2).double()
    k8 = _pad_rows(quantized.k8.view(b, seq_kv, heads, d), kv_tiles * block_n).transpose(1, 2).double()
    q_scale = quantized.q_scale[:, :, :sq, None]
    k_scale = quantized.k_scale.view(b, heads, -1, K_GROUPS)
    group = (torch.arange(block_n, device=q8.device) % 8) // 2
    row_max = torch.full((b, heads, sq, 1), -math.inf, device=q8.device)
    denominator = torch.zeros(b, heads, sq, 1, device=q8.device)
    acc = torch.zeros(b, heads, sq, d, device=q8.device)
    previous_rescale = torch.zeros_like(denominator)
    pv = torch.zeros_like(acc)
    for tile in range(kv_tiles):
        keys_here = slice(tile * block_n, (tile + 1) * block_n)
        scores = (q8 @ k8[:, :, keys_here].transpose(-1, -2)).to(f32) * (q_scale * k_scale[:, :, tile, group][:, :, None])
        valid = torch.arange(tile * block_n, (tile + 1) * block_n, device=q8.device) < seq_kv
        scores = scores.masked_fill(~valid, -math.inf)
        new_max = torch.maximum(row_max, scores.amax(-1, keepdim=True))
        rescale = torch.exp2(row_max - new_max)
        probabilities = torch.exp2(scores - (new_max - torch.tensor(LOG2_P_SCALE, dtype=f32))).to(torch.float8_e4m3fn).to(f32)
        denominator = denominator * rescale + probabilities.sum(-1, keepdim=True)  # the kernel sums the e4m3 P it multiplies
        acc = acc * previous_rescale + pv
        pv = probabilities @ v8[:, :, keys_here]
        previous_rescale, row_max = rescale, new_max
    out = (acc * previous_rescale + pv) * (1 / denominator) * quantized.v_scale[:, :, None] + quantized.v_mean[:, :, None]
    return out.transpose(1, 2).reshape(b, sq, c).to(out_dtype)


def attention_8bit_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """What the 8-bit path computes, emulated in PyTorch on any device."""
    return attention_from_quantized(quantize_reference(q, k, v, heads), heads, k.shape[1], q.dtype)


def problem(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> str:
    """'' when the 8-bit kernel can run these tensors and is the faster choice, else why not."""
    head_dim = q.shape[-1] // heads
    if head_dim not in (64, 128):
        return f"head dim {head_dim} is not 64 or 128"
    if not q.dtype == k.dtype == v.dtype:
        return "q, k and v dtypes differ"
    if k.shape[1] < MIN_KEYS:
        return (f"{k.shape[1]} keys (cross-attention): quantising costs more than it saves there, the bf16 kernels "
                "run it ~2x faster (bench/results/attention_8bit_h200_bench.log)")
    return kernel_problem(q, k, v)


def attention_8bit(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                   fallback_backend: str = "auto") -> tuple[torch.Tensor, Decision]:
    """Wan attention [B, S, heads * d] -> same, through the 8-bit kernel; where it cannot run, the bf16 dispatch
    (kernels/attention.py, given `fallback_backend`) runs instead and the Decision says why."""
    reason = problem(q, k, v, heads)
    if not reason:
        return attention_8bit_tilelang(q, k, v, heads), Decision("attention", BACKEND)
    out, decision = attention(q, k, v, heads, fallback_backend)
    extra = f"; {decision.reason}" if decision.reason and decision.reason != reason else ""
    return out, Decision("attention", decision.backend, f"8-bit kernel not run: {reason}{extra}")
