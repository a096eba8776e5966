"""Sequence parallelism on the real in-process ComfyUI with gloo worker processes and tiny 4-head Wan models: the
parallel clip equals the single-process clip, both Wan 2.2 experts share one group, the banded VAE, a refused
degree, the whole SVI Long Video graph through the node (with resume), a worker killed mid-clip, an interrupt, and
no worker left behind by a stopped group or a killed server."""

import os
import signal
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from svi_infinity.demo.tiny_models import wan21_vae_state_dict, write_multihead_wan
from svi_infinity.demo.workflows import load_api_workflow, with_tiny_models

HEADS = 4
DEMO = Path(__file__).resolve().parents[2] / "demo"
LIGHTNING = "lightning 4-step (lightx2v / Wan2.2-Lightning)"


def pack_module(name):
    """The module as ComfyUI loaded the pack (one copy per process: torch.distributed has one default group)."""
    import nodes

    package = nodes.NODE_CLASS_MAPPINGS["SVISequenceParallel"].__module__.rsplit(".nodes.", 1)[0]
    return sys.modules[f"{package}.{name}"]


@pytest.fixture(scope="module")
def sp(comfy_runtime):
    module = pack_module("pipeline.sequence_parallel")
    yield module
    pack_module("pipeline.parallel_workers").stop_all()


@pytest.fixture(scope="module")
def four_head_files(comfy_runtime):
    folder = comfy_runtime.models_dir / "diffusion_models"
    names = {"wan21_i2v": ("svi_tiny_wan21_i2v_4heads_random.safetensors", True, 1),
             "wan22_high": ("svi_tiny_wan22_high_4heads_random.safetensors", False, 2),
             "wan22_low": ("svi_tiny_wan22_low_4heads_random.safetensors", False, 3)}
    for name, image_branch, seed in names.values():
        write_multihead_wan(folder / name, image_branch=image_branch, heads=HEADS, seed=seed)
    return {role: name for role, (name, _, _) in names.items()}


@pytest.fixture(scope="module")
def models(four_head_files, comfy_runtime):
    import comfy.sd

    folder = comfy_runtime.models_dir / "diffusion_models"
    return {role: comfy.sd.load_diffusion_model(str(folder / name)) for role, name in four_head_files.items()}


class VisionOutput:
    def __init__(self, states):
        self.penultimate_hidden_states = states


def clip_inputs(image_branch: bool, frames: int = 3, rows: int = 6, cols: int = 10):
    import node_helpers

    generator = torch.Generator().manual_seed(0)
    values = {"concat_latent_image": torch.randn(1, 16, frames, rows, cols, generator=generator),
              "concat_mask": torch.ones(1, 1, frames, rows, cols)}
    if image_branch:
        values["clip_vision_output"] = VisionOutput(torch.randn(1, 257, 1280, generator=generator))
    text = [[torch.randn(1, 24, 4096, generator=generator), {"pooled_output": None}]]
    return node_helpers.conditioning_set_values(text, values), torch.zeros(1, 16, frames, rows, cols)


def sample(model, model_low, image_branch, cfg=1.0):
    from svi_infinity.pipeline.clips import sample_clip
    from svi_infinity.svi.plan import schedule_sigmas

    cond, latent = clip_inputs(image_branch)
    return sample_clip(model, model_low, cond, cond, latent, seed=5, sigmas=schedule_sigmas(LIGHTNING), boundary=0.9,
                       cfg=cfg)


@pytest.fixture
def ulysses_calls(sp, monkeypatch):
    """Counts the sharded self-attention calls (so a test knows the parallel path ran)."""
    calls = []
    real = sp.ulysses_attention

    def counted(*args, **kwargs):
        calls.append(args[5])
        return real(*args, **kwargs)

    monkeypatch.setattr(sp, "ulysses_attention", counted)
    return calls


def test_parallel_wan21_clip_equals_the_single_process_clip(sp, models, ulysses_calls):
    model = models["wan21_i2v"]
    expected = sample(model, None, True, cfg=2.0)  # CFG 2: cond and uncond as one batch of 2
    runtime = sp.runtime_for(2, cuda=False)
    got = sample(sp.parallel_model(model, runtime), None, True, cfg=2.0)
    assert len(ulysses_calls) == 2 * 4 and ulysses_calls[0].degree == 2  # 2 blocks x 4 steps, sharded
    assert ulysses_calls[0].length == 3 * 3 * 5 and ulysses_calls[0].padding == 1  # 45 tokens: the last shard padded
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not model.object_patches and "wrappers" not in model.model_options["transformer_options"]  # input untouched


def test_fast_kernels_before_the_node_reach_the_workers_and_after_it_are_refused(sp, models, ulysses_calls):
    """The kernel node's settings travel with the weights (each worker patches its copy alike: off Hopper that is
    ComfyUI's math, so the clip is unchanged); the kernel node after this one would drop the self-attention marks."""
    from svi_infinity.kernels.model_patch import SETTINGS_ATTACHMENT, accelerate_model

    model = models["wan21_i2v"]
    expected = sample(model, None, True)
    runtime = sp.runtime_for(2, cuda=False)
    accelerated, _ = accelerate_model(model)
    parallel = sp.parallel_model(accelerated, runtime)
    assert parallel.get_attachment(SETTINGS_ATTACHMENT)["attention_backend"] == "auto"
    torch.testing.assert_close(sample(parallel, None, True), expected, rtol=1e-5, atol=1e-5)
    after = sp.parallel_model(model, runtime).clone()
    attention = model.model.diffusion_model.blocks[1].self_attn
    after.add_object_patch("diffusion_model.blocks.1.self_attn.forward", types.MethodType(type(attention).forward, attention))
    with pytest.raises(sp.SequenceParallelError, match="connect SVI Fast Kernels .* before SVI Sequence Parallel"):
        sample(after, None, True)
    assert runtime.group.running  # refused before any worker was involved


def test_wan22_experts_share_one_group_of_four_and_match(sp, models, ulysses_calls):
    high, low = models["wan22_high"], models["wan22_low"]
    expected = sample(high, low, False)
    runtime = sp.runtime_for(4, cuda=False)
    got = sample(sp.parallel_model(high, runtime), sp.parallel_model(low, runtime), False)
    assert len(runtime.models) == 2 and len(runtime.group.processes) == 3  # both experts resident on the 3 workers
    assert {call.degree for call in ulysses_calls} == {4}
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_degree_that_does_not_divide_the_heads_is_refused(sp, models):
    problem = sp.model_problem(models["wan21_i2v"], 3, None)
    assert "degree 3 does not divide the model's 4 attention heads" in problem and "use 2, 4" in problem


def test_banded_vae_decode_and_encode(sp):
    """With the middle attention on the whole frame, a 12-row halo decodes and encodes as one process does up to
    rounding, as a halo over the whole frame does; a 2-row halo does not (the convolutions reach past it)."""
    import comfy.sd

    vae = comfy.sd.VAE(sd=wan21_vae_state_dict(dim=8, seed=3))
    latent = torch.randn(1, 16, 2, 32, 4, generator=torch.Generator().manual_seed(2))
    expected = vae.decode(latent)
    runtime = sp.runtime_for(2, cuda=False)
    relative = lambda got, want: ((got - want).norm() / want.norm()).item()  # noqa: E731
    whole_frame = relative(sp.parallel_vae(vae, runtime, halo=32).decode(latent), expected)
    default = sp.parallel_vae(vae, runtime)
    errors = {halo: relative(sp.parallel_vae(vae, runtime, halo=halo).decode(latent), expected) for halo in (2,)}
    errors[sp.DEFAULT_VAE_HALO] = relative(default.decode(latent), expected)
    print(f"banded decode, 2 ranks, relative L2: whole-frame halo {whole_frame:.1e}, by halo {errors}")
    assert whole_frame < 1e-6 and errors[12] < 1e-6 and errors[2] > 1e-3
    pixels = expected[0]  # [F, H, W, 3]
    assert relative(default.encode(pixels), vae.encode(pixels)) < 1e-6


def sequence_parallel_long_video(runtime, files, *, prefix, num_clips, degree=2, resume=False):
    prompt = with_tiny_models(load_api_workflow("svi_wan22_turbo_long_12clips"), runtime.tiny_models, width=32, height=32,
                              length=9, num_clips=num_clips)
    loaders = [k for k, v in prompt.items() if v["class_type"] == "UNETLoader"]
    prompt[loaders[0]]["inputs"]["unet_name"], prompt[loaders[1]]["inputs"]["unet_name"] = files["wan22_high"], files["wan22_low"]
    long_video = next(v for v in prompt.values() if v["class_type"] == "SVILongVideo")["inputs"]
    if degree:
        prompt["90"] = {"class_type": "SVISequenceParallel", "inputs": {
            "model": long_video["model"], "model_low_noise": long_video["model_low_noise"], "vae": long_video["vae"],
            "degree": degree}}
        long_video.update(model=["90", 0], model_low_noise=["90", 1], vae=["90", 2])
    long_video.update(filename_prefix=prefix, resume=resume, seed=7)
    return prompt


def clip_latents(comfy_runtime, prefix, count):
    run_dir = next((comfy_runtime.output_dir / "svi_sp").glob(f"{prefix}_run_*"))
    paths = [run_dir / f"clip_{index:05d}.latent.safetensors" for index in range(count)]
    return [load_file(str(path))["samples"] if path.exists() else None for path in paths], run_dir


@pytest.fixture
def on_clip_step(comfy_runtime, monkeypatch):
    from svi_infinity.pipeline.long_video import CLIP_EVENT

    server = comfy_runtime.server
    original = server.send_sync
    hooks = []

    def spy(event, data, sid=None):
        if event == CLIP_EVENT and data["status"] == "running" and data.get("step") and hooks:
            hooks[0](data)
        return original(event, data, sid)

    monkeypatch.setattr(server, "send_sync", spy)
    return hooks


def test_long_video_through_the_node_kill_interrupt_and_resume(comfy_runtime, sp, four_head_files, on_clip_step):
    """SVI Long Video unchanged behind the node equals the single-process run; a worker killed in clip 2 ends the
    prompt with an error naming it, the finished clip is kept, and the next prompt restarts the group and resumes;
    an interrupt leaves the group running."""
    import comfy.model_management

    single = comfy_runtime.run_prompt(sequence_parallel_long_video(comfy_runtime, four_head_files, prefix="svi_sp/single",
                                                                   num_clips=2, degree=0))
    assert single.success, single.error
    parallel = comfy_runtime.run_prompt(sequence_parallel_long_video(comfy_runtime, four_head_files, prefix="svi_sp/whole",
                                                                     num_clips=2))
    assert parallel.success, parallel.error
    report = next(out["text"] for out in parallel.outputs.values() if any("Ulysses" in line for line in out.get("text", [])))
    assert any(line.startswith("rank 1: worker pid") for line in report)
    expected, _ = clip_latents(comfy_runtime, "single", 2)
    got, _ = clip_latents(comfy_runtime, "whole", 2)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)

    runtime = sp.runtime_for(2, cuda=False)
    victim = runtime.group.processes[0]

    def kill_worker_in_clip_2(data):
        if data["clip"] == 1:
            on_clip_step.clear()
            os.kill(victim.pid, signal.SIGKILL)

    on_clip_step.append(kill_worker_in_clip_2)
    killed = comfy_runtime.run_prompt(sequence_parallel_long_video(comfy_runtime, four_head_files, prefix="svi_sp/killed",
                                                                   num_clips=2))
    assert not killed.success
    message = killed.error["exception_message"]
    assert f"worker rank 1 (pid {victim.pid}) exited with code -9" in message and "next prompt starts it again" in message
    assert not runtime.group.running and not psutil.pid_exists(victim.pid)
    done, _ = clip_latents(comfy_runtime, "killed", 2)
    assert done[0] is not None and done[1] is None

    def interrupt_in_clip_2(data):
        if data["clip"] == 1:
            on_clip_step.clear()
            comfy.model_management.interrupt_current_processing(True)

    on_clip_step.append(interrupt_in_clip_2)
    stopped = comfy_runtime.run_prompt(sequence_parallel_long_video(comfy_runtime, four_head_files, prefix="svi_sp/killed",
                                                                    num_clips=2, resume=True))
    assert not stopped.success and stopped.error["event"] == "execution_interrupted"
    workers = [p.pid for p in runtime.group.processes]
    assert runtime.group.running and all(psutil.pid_exists(pid) for pid in workers)  # a fresh group, kept after the stop

    resumed = comfy_runtime.run_prompt(sequence_parallel_long_video(comfy_runtime, four_head_files, prefix="svi_sp/killed",
                                                                    num_clips=2, resume=True))
    assert resumed.success, resumed.error
    assert [p.pid for p in runtime.group.processes] == workers  # the same workers served the resumed run
    got, run_dir = clip_latents(comfy_runtime, "killed", 2)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert (run_dir / "video.mp4").is_file()

    runtime.stop()
    deadline = time.monotonic() + 10
    while any(psutil.pid_exists(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(psutil.pid_exists(pid) for pid in workers)


def test_workers_end_when_the_server_process_is_killed(comfy_dir, tmp_path):
    """A server killed with SIGKILL (no atexit, no cleanup) leaves no worker behind."""
    script = tmp_path / "server.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(DEMO)!r})
        import pack_alias
        pack_alias.import_pack()
        from pathlib import Path
        from svi_infinity.demo.comfy_runtime import import_comfy
        import_comfy(Path({str(comfy_dir)!r}), Path({str(tmp_path / 'base')!r}))
        from svi_infinity.pipeline.sequence_parallel import runtime_for
        runtime = runtime_for(3, cuda=False)
        runtime.ensure()
        print(" ".join(str(p.pid) for p in runtime.group.processes), flush=True)
        time.sleep(600)
    """))
    # its worker logs folder (which a killed server cannot remove) goes to this test's folder
    server = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "TMPDIR": str(tmp_path)})
    try:
        workers = [int(pid) for pid in server.stdout.readline().split()]
        assert len(workers) == 2 and all(psutil.pid_exists(pid) for pid in workers)
    finally:
        server.kill()
        server.wait()
    deadline = time.monotonic() + 15
    while any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in workers):
        assert time.monotonic() < deadline, "a worker outlived the server"
        time.sleep(0.2)
