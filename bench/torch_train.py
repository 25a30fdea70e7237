"""PyTorch peer of bench/bench_train.c (issue 6): the same autoencoder
(tests/aesim_torch.py builds the PyTorch twin of an aesim spec), the same
batch (the .npy written by bench_train --data-out, kept in memory), the same
thread count (torch.set_num_threads), the same step: zero_grad -> forward ->
MSE (mean over N*C*H*W, as aesim's inv_count) -> backward -> Adam
(lr 1e-3, eps 1e-7 as aesim's ADAM_CONFIG_DEFAULT); or, for --mode encode,
the encoder alone under torch.inference_mode().

Each in-process setting listed in --settings is timed in turn, warm-up
steps excluded:
  default        as installed: NCHW tensors, torch.backends.mkldnn on (its
                 default), zero_grad() as default
  no-mkldnn      torch.backends.mkldnn.enabled = False (PyTorch's own
                 im2col + BLAS convolution, the scheme aesim uses)
  channels_last  model and batch in torch.channels_last (NHWC), mkldnn on
  channels_last-bf16  channels_last under torch.autocast("cpu",
                 dtype=torch.bfloat16) (issue 16: PyTorch's bf16 mixed
                 precision; the loss in float32); not a candidate for the
                 per-layer profile, which compares float32 kernels
Process-wide settings that must be in place before start-up (glibc malloc
tunables, MALLOC_ARENA_MAX) are chosen by launch/bench.sh, which passes a
label for them in --env-label.

--profile P: P more training steps of the fastest setting timed in this
process under torch.profiler, printing the self+children CPU time of every convolution
forward (aten::convolution) and backward (aten::convolution_backward)
grouped by input shape, for the per-layer comparison in the report.

Output: JSON lines as bench/bench_common.h describes (impl "torch").
Does not: compile (torch.compile / TorchScript), use a GPU, or load data.
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import aesim_torch  # noqa: E402  (the PyTorch twin of an aesim spec)

# Must match the presets of src/model/model.c (include/model/model.h lists them).
PRESETS = {
    "mnist": "c16 p c8 p c8 | c16 u c16 u c1",
    "imagenet32": "c16 c16 p c32 c32 p c8 | c32 u c16 u c16 c3",
    "imagenet64": "c16 c16 p c32 c32 p c32 p c8 | c32 u c32 u c16 u c16 c3",
}
# aesim's Adam defaults (include/nn/optim_step.h ADAM_CONFIG_DEFAULT).
ADAM_LR, ADAM_EPS = 1e-3, 1e-7
SETTINGS = ("default", "no-mkldnn", "channels_last", "channels_last-bf16")


def emit(obj):
    print(json.dumps(obj), flush=True)


def make_step(model, x, mode, bf16=False):
    if mode == "encode":
        def step():
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                model.encoder(x)
        return step
    opt = torch.optim.Adam(model.parameters(), lr=ADAM_LR, eps=ADAM_EPS)

    def step():
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = model(x)
        loss = torch.mean((y.float() - x) ** 2)
        loss.backward()
        opt.step()
        return loss
    return step


def setup(spec, channels, x_np, setting):
    torch.backends.mkldnn.enabled = setting != "no-mkldnn"
    torch.manual_seed(0)
    model = aesim_torch.build(spec, channels)
    x = torch.from_numpy(x_np)
    if setting.startswith("channels_last"):
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    return model, x


def time_setting(args, spec, x_np, setting, workload, flop_item):
    model, x = setup(spec, x_np.shape[1], x_np, setting)
    step = make_step(model, x, args.mode, bf16=setting.endswith("-bf16"))
    for _ in range(args.warmup):
        step()
    seconds = []
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for r in range(args.runs):
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        seconds.append(time.perf_counter() - t0)
        print(f"# {workload} torch {setting} [{args.env_label}] run {r + 1}: {seconds[-1]:.3f} s "
              f"({args.steps * args.batch / seconds[-1]:.1f} images/s)", flush=True)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0
    variant = setting if args.env_label == "default" else f"{setting}, {args.env_label}"
    emit({"kind": "result", "workload": workload, "impl": "torch", "variant": variant,
          "setting": setting, "env": args.env_label, "seconds": seconds,
          "items": args.steps * args.batch, "flop_item": flop_item, "bytes_run": 0,
          "threads": torch.get_num_threads(), "steps": args.steps, "warmup": args.warmup,
          "minflt_per_step": faults / (args.runs * args.steps)})
    return statistics.median(seconds)


def profile_layers(args, spec, x_np, workload, setting):
    """Per-shape convolution times of one setting (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile
    model, x = setup(spec, x_np.shape[1], x_np, setting)
    step = make_step(model, x, "train")
    for _ in range(args.warmup):
        step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(args.profile):
            step()
    for ev in prof.key_averages(group_by_input_shape=True):
        if ev.key not in ("aten::convolution", "aten::convolution_backward"):
            continue
        shapes = ev.input_shapes
        # convolution(input, weight, bias, ...); convolution_backward(grad_out, input, weight, ...)
        inp, w = (shapes[0], shapes[1]) if ev.key == "aten::convolution" else (shapes[1], shapes[2])
        emit({"kind": "torch_layer", "workload": workload, "op": "fwd" if ev.key == "aten::convolution" else "bwd",
              "N": inp[0], "C": inp[1], "H": inp[2], "W": inp[3], "OC": w[0], "K": w[2],
              "calls": ev.count, "seconds_per_call": ev.cpu_time_total * 1e-6 / ev.count,
              "steps": args.profile, "setting": setting, "env": args.env_label})


def forward_flops(spec, C, H, W, encoder_only):
    """2 x MACs of the convolutions for one image (as model_forward_flops)."""
    f, c, h = 0.0, C, H
    w = W
    for t in spec.replace(",", " ").split():
        if t == "|":
            if encoder_only:
                break
            continue
        if t.startswith("c"):
            oc, k = (int(v) for v in t[1:].split("k")) if "k" in t else (int(t[1:]), 3)
            f += 2.0 * oc * c * k * k * h * w
            c = oc
        elif t == "p":
            h, w = h // 2, w // 2
        elif t == "u":
            h, w = h * 2, w * 2
    return f


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="imagenet64", choices=sorted(PRESETS))
    ap.add_argument("--mode", default="train", choices=("train", "encode"))
    ap.add_argument("--data", required=True, help=".npy batch [B][C][H][W] float32 from bench_train --data-out")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--env-label", default="default")
    ap.add_argument("--profile", type=int, default=0)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    x_np = np.ascontiguousarray(np.load(args.data), dtype=np.float32)
    args.batch = x_np.shape[0]
    spec = PRESETS[args.preset]
    workload = f"{args.mode} {args.preset} B={args.batch}"
    flop = forward_flops(spec, *x_np.shape[1:], encoder_only=args.mode == "encode")
    flop_item = flop if args.mode == "encode" else 3.0 * flop
    emit({"kind": "info", "torch_version": torch.__version__, "torch_threads": torch.get_num_threads(),
          "env_label": args.env_label, "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
          "malloc_arena_max": os.environ.get("MALLOC_ARENA_MAX", "")})
    timed = {}
    for setting in args.settings.split(","):
        if setting not in SETTINGS:
            ap.error(f"unknown setting {setting}")
        timed[setting] = time_setting(args, spec, x_np, setting, workload, flop_item)
    if args.profile > 0 and args.mode == "train":
        fp32 = {s: t for s, t in timed.items() if not s.endswith("-bf16")}
        profile_layers(args, spec, x_np, workload, min(fp32 or timed, key=(fp32 or timed).get))


if __name__ == "__main__":
    main()
