"""The whole aesim model against PyTorch (Debian python3-torch).

For the presets and a custom spec, tests/tool_model_ref (C) writes its
initial checkpoint, the batch of every step, the output, bottleneck, loss and
gradients of step 0, and the checkpoint after 10 optimizer steps.  PyTorch,
given the same weights (read from the checkpoint with numpy alone) and the
same batches, must give the same values.

Reference: PyTorch in float64 (so the comparison measures aesim's float32
error, not PyTorch's).  Tolerance, per tensor: |aesim - torch| <=
RTOL * |torch| + ATOL_FRAC * max|torch|, with RTOL = 1e-4 (the issue's 1e-4
relative) and ATOL_FRAC = 1e-4 (the same relative bound, measured against the
tensor's scale, so elements near zero, e.g. gradients of almost-dead units,
are judged against the tensor's magnitude rather than their own).

Kernels: every convolution kernel this CPU runs (AESIM_KERNEL = direct,
the default where AVX-512F exists, with pooling and upsampling fused into
the convolutions; generic = im2col + OpenBLAS and avx512 = im2col + aesim's
GEMMs, unfused), since the model takes other paths for each.
Threads: forward, loss and gradients are compared with 1 and 2 OpenMP
threads (the weight-gradient reduction order depends on the thread count).
The 10-step trajectory is compared at 1 thread only: Adam divides by
sqrt(v), so in its first steps it moves every weight by about lr whatever
the size of its gradient, and a weight whose gradient is almost exactly zero
(sums that cancel) can move differently when the last bits of that gradient
differ; at 1 thread the summation order is fixed and the bound above holds.
"""
import os
import subprocess
import tempfile
import unittest

import numpy as np
import torch

import aesim_torch

BUILD = os.environ.get("AESIM_BUILD", "build")
TOOL = os.path.join(BUILD, "tests", "tool_model_ref")
RTOL = 1e-4
ATOL_FRAC = 1e-4
STEPS = 10


def _cpu_has_avx512f():
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " avx512f" in line for line in f)
    except OSError:
        return False


# direct and avx512 need AVX-512F (the tool refuses them otherwise)
KERNELS = ["generic"] + (["direct", "avx512"] if _cpu_has_avx512f() else [])

CASES = [
    # name, spec, C, H, W, N, optimizer
    ("mnist", "mnist", 1, 28, 28, 4, "adam"),
    ("imagenet32", "imagenet32", 3, 32, 32, 3, "adam"),
    ("imagenet64", "imagenet64", 3, 64, 64, 2, "adam"),
    ("custom_k5_sgd", "c6k5 p c4 | c5 u c3k1 c2", 2, 12, 10, 3, "sgd"),
    # pairs that would fuse across the encoder's end: the bottleneck must
    # still be written (found in review: model_encode returned zeros)
    ("pool_after_bottleneck", "c8 | p c8 u c1", 1, 8, 8, 3, "adam"),
    ("upsample_bottleneck", "c4 p c4 u | c1", 1, 8, 8, 3, "adam"),
]


def close(test, name, got, ref):
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    test.assertEqual(got.shape, ref.shape, name)
    err = np.abs(got - ref)
    bound = RTOL * np.abs(ref) + ATOL_FRAC * np.abs(ref).max()
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    test.assertTrue(np.all(err <= bound),
                    f"{name}: max abs err {err.max():.3e}, worst {worst}: aesim {got[worst]:.9g} "
                    f"torch {ref[worst]:.9g} (bound {bound[worst]:.3e})")


class ModelVsTorch(unittest.TestCase):
    def run_case(self, name, spec, C, H, W, N, opt, threads, kernel):
        with tempfile.TemporaryDirectory(dir=os.environ.get("AESIM_TEST_TMP")) as d:
            env = dict(os.environ, OMP_NUM_THREADS=str(threads), AESIM_KERNEL=kernel)
            subprocess.run([TOOL, spec, str(C), str(H), str(W), str(N), str(STEPS), opt, d], check=True, env=env)
            name = f"{name} ({kernel} kernel, {threads} thread{'s' if threads > 1 else ''})"
            init = np.load(os.path.join(d, "init.npz"))
            final = np.load(os.path.join(d, "final.npz"))
            ref = np.load(os.path.join(d, "ref.npz"))
            arch = bytes(init["meta.arch"]).decode()
            self.assertEqual(list(init["meta.input_shape"]), [C, H, W])
            model = aesim_torch.build(arch, C, torch.float64)
            aesim_torch.load_npz(model, init)
            x = torch.from_numpy(ref["x"].astype(np.float64))
            # Forward, bottleneck and loss of step 0.
            y = model(x[0])
            close(self, f"{name} output", ref["y0"], y.detach().numpy())
            z = model.encoder(x[0]).reshape(N, -1)
            close(self, f"{name} bottleneck", ref["z0"], z.detach().numpy())
            loss = torch.nn.functional.mse_loss(y, x[0])
            close(self, f"{name} loss", ref["loss"][:1], [loss.item()])
            # Gradients of step 0.
            model.zero_grad()
            loss.backward()
            for j, conv in enumerate(model.convs):
                close(self, f"{name} grad conv{j}.weight", ref[f"grad.conv{j}.weight"], conv.weight.grad.numpy())
                close(self, f"{name} grad conv{j}.bias", ref[f"grad.conv{j}.bias"], conv.bias.grad.numpy())
            if threads != 1:
                return
            # STEPS optimizer steps on the same batches.
            model = aesim_torch.build(arch, C, torch.float64)
            aesim_torch.load_npz(model, init)
            if opt == "adam":
                o = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-7)
            else:
                o = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
            losses = []
            for s in range(STEPS):
                o.zero_grad()
                l = torch.nn.functional.mse_loss(model(x[s]), x[s])
                losses.append(l.item())
                l.backward()
                o.step()
            close(self, f"{name} losses over {STEPS} steps", ref["loss"], losses)
            for j, conv in enumerate(model.convs):
                close(self, f"{name} conv{j}.weight after {STEPS} steps", final[f"conv{j}.weight"],
                      conv.weight.detach().numpy())
                close(self, f"{name} conv{j}.bias after {STEPS} steps", final[f"conv{j}.bias"],
                      conv.bias.detach().numpy())
            self.assertEqual(int(final["meta.state"][1]), STEPS)

    def test_cases(self):
        for kernel in KERNELS:
            for case in CASES:
                for threads in (1, 2):
                    with self.subTest(case=case[0], threads=threads, kernel=kernel):
                        self.run_case(*case, threads, kernel)


if __name__ == "__main__":
    unittest.main()
