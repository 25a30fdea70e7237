"""PyTorch peer of bench/bench_amx_conv.c: the forward of one 3x3 conv
(stride 1, pad 1, bias, ReLU) at the imagenet64 shapes, batch 128, under
torch.autocast("cpu", dtype=torch.bfloat16) with the module and input in
torch.channels_last (oneDNN, AMX tiles on this CPU), in inference mode.
Two input variants per shape:
  autocast      float32 channels_last input: autocast converts it to bf16
                each call (output bf16 channels_last)
  bf16-input    the input already bf16 channels_last (no conversion in;
                autocast still casts the float32 weights every call)
  bf16-module   module weights and input already bf16, no autocast: the
                convolution alone (the peer of bench_amx_conv's amx-pre)
Median and min of --runs calls after --warmup calls, variants interleaved.
Run it as launch/bench.sh runs torch_train.py, e.g.
  GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184:glibc.malloc.hugetlb=1 \
    /usr/bin/python3 bench/torch_conv_bf16.py --threads 2
Output: a human table and JSON lines as bench/bench_common.h describes.
"""
import argparse
import json
import statistics
import time

import torch

SHAPES = [(3, 16, 64, 64), (16, 16, 64, 64), (16, 32, 32, 32), (32, 32, 32, 32), (32, 32, 16, 16)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"# torch {torch.__version__} threads {torch.get_num_threads()} N={args.n}")
    for C, OC, H, W in SHAPES:
        conv = torch.nn.Conv2d(C, OC, 3, padding=1).to(memory_format=torch.channels_last)
        x = torch.randn(args.n, C, H, W).contiguous(memory_format=torch.channels_last)
        xb = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        convb = torch.nn.Conv2d(C, OC, 3, padding=1).to(torch.bfloat16).to(memory_format=torch.channels_last)
        variants = {"autocast": (conv, x, True), "bf16-input": (conv, xb, True), "bf16-module": (convb, xb, False)}
        times = {k: [] for k in variants}
        with torch.inference_mode():
            for r in range(args.warmup + args.runs):
                for name, (mod, inp, ac) in variants.items():
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=ac):
                        t0 = time.perf_counter()
                        y = torch.relu(mod(inp))
                        dt = time.perf_counter() - t0
                    assert y.dtype == torch.bfloat16
                    if r >= args.warmup:
                        times[name].append(dt)
        flop = 2.0 * args.n * OC * C * 9 * H * W
        for name, t in times.items():
            med = statistics.median(t)
            print(f"{C}->{OC} @{H}x{W:<4} torch {name:<11} {med*1e3:9.3f} ms {min(t)*1e3:9.3f} min "
                  f"{med*1e3/args.n:9.4f} ms/img {flop/med*1e-9:9.1f} GFLOP/s")
            print(json.dumps({"kind": "result", "workload": f"conv3x3 fwd {C}->{OC} @{H}x{W} B={args.n}",
                              "impl": "torch", "variant": name, "seconds": t, "items": args.n,
                              "flop_item": flop / args.n, "bytes_run": 0}), flush=True)


if __name__ == "__main__":
    main()
