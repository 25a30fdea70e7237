#!/usr/bin/python3
"""NT-Xent (src/ntxent.c) and the model's gradient at the bottleneck
(model_forward_backward_ex) against PyTorch (Debian python3-torch).

1. Loss and gradient: tests/tool_ntxent loss on random codes (some rows
   with negative entries, some all-zero-ish tiny ones, D from 1 to 392, n
   from 1 to 64, tau 0.1 / 0.5 / 2) against SimCLR's NT-Xent written in
   PyTorch float64 the usual way: F.normalize, similarity matrix / tau, the
   diagonal masked with -inf, cross_entropy with the positive i <-> i + n as
   the target, autograd for dL/dz.
2. The model: tool_ntxent model runs a denoising step (input = noisy
   images, target = clean) plus W * NT-Xent on the bottleneck through the
   whole autoencoder; the PyTorch twin (tests/aesim_torch.py) with the same
   weights computes mse(model(noisy), clean) + W * NT-Xent(encoder(noisy))
   and autograd gives every conv's gradient.  Specs: the mnist preset (its
   bottleneck is a ReLU conv whose ReLU backward is fused into the decoder:
   the code gradient must go through that ReLU), a spec ending the encoder
   with a max-pool, and one where the decoder starts with an upsample;
   each also with --contrastive-pool avg (NT-Xent of the bottleneck's
   channel means, torch: z.mean((2, 3))).
3. The projection head (--contrastive-head, nn/proj_head.h): tool_ntxent
   head gives NT-Xent of g(z) and its gradients; PyTorch's
   Sequential(Linear, ReLU, Linear) with the same weights, by autograd.
Tolerance as test_model_torch.py: |c - torch| <= 1e-4 |torch| + 1e-4
max|torch|.  Exit code 0 = pass.
"""
import os
import subprocess
import tempfile
import unittest

import numpy as np
import torch
import torch.nn.functional as F

import aesim_torch

BUILD = os.environ.get("AESIM_BUILD", "build")
TOOL = os.path.join(BUILD, "tests", "tool_ntxent")
RTOL = 1e-4
ATOL_FRAC = 1e-4


def close(test, name, got, ref, rtol=RTOL, atol_frac=ATOL_FRAC):
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    test.assertEqual(got.shape, ref.shape, name)
    err = np.abs(got - ref)
    bound = rtol * np.abs(ref) + atol_frac * np.abs(ref).max()
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    test.assertTrue(np.all(err <= bound),
                    f"{name}: max abs err {err.max():.3e}, worst {worst}: c {got[worst]:.9g} "
                    f"torch {ref[worst]:.9g} (bound {bound[worst]:.3e})")


def ntxent_torch(z, tau):
    """SimCLR eq. 1 averaged over all 2n anchors; z [2n][D] float64 tensor."""
    n2 = z.shape[0]
    n = n2 // 2
    u = F.normalize(z, dim=1, eps=1e-8)
    s = u @ u.T / tau
    s = s.masked_fill(torch.eye(n2, dtype=torch.bool), float("-inf"))
    target = torch.cat([torch.arange(n, n2), torch.arange(0, n)])
    return F.cross_entropy(s, target)


class NtXentVsTorch(unittest.TestCase):
    def test_loss_and_grad(self):
        rng = np.random.default_rng(17)
        cases = [(1, 5, 0.5), (2, 1, 0.5), (4, 3, 0.1), (16, 32, 0.5), (64, 392, 0.2), (33, 17, 2.0)]
        with tempfile.TemporaryDirectory(dir=os.environ.get("AESIM_TEST_TMP")) as d:
            for n, D, tau in cases:
                with self.subTest(n=n, D=D, tau=tau):
                    z = rng.standard_normal((2 * n, D)).astype(np.float32)
                    if n >= 4:
                        z[n + 1] = z[1] + 0.01 * z[n + 1]       # a close positive
                        z[2] = np.abs(z[2]) * 1e-3              # a small code (ReLU-like)
                    scale = 0.7
                    np.save(os.path.join(d, "z.npy"), z)
                    out = os.path.join(d, "out.npz")
                    subprocess.run([TOOL, "loss", os.path.join(d, "z.npy"), repr(tau), repr(scale), out],
                                   check=True)
                    got = np.load(out)
                    zt = torch.from_numpy(z.astype(np.float64)).requires_grad_(True)
                    loss = ntxent_torch(zt, tau)
                    loss.backward()
                    close(self, f"loss n={n} D={D} tau={tau}", got["loss"], [loss.item()])
                    close(self, f"dz n={n} D={D} tau={tau}", got["dz"], scale * zt.grad.numpy())

    def test_projection_head(self):
        # --contrastive-head: NT-Xent of g(z) = W2 ReLU(W1 z + b1) + b2
        # (SimCLR's head) against nn.Sequential(Linear, ReLU, Linear) with
        # the tool's initial weights; dz and every head gradient by autograd
        rng = np.random.default_rng(23)
        with tempfile.TemporaryDirectory(dir=os.environ.get("AESIM_TEST_TMP")) as d:
            for n, D, hid, tau in ((3, 5, 8, 0.5), (16, 32, 64, 0.2), (40, 8, 16, 1.0)):
                with self.subTest(n=n, D=D, hid=hid, tau=tau):
                    z = np.abs(rng.standard_normal((2 * n, D))).astype(np.float32)  # pooled ReLU codes
                    z[n:] += 0.1 * rng.standard_normal((n, D)).astype(np.float32)
                    scale = 1.5
                    np.save(os.path.join(d, "z.npy"), z)
                    out = os.path.join(d, "head.npz")
                    subprocess.run([TOOL, "head", os.path.join(d, "z.npy"), repr(tau), repr(scale), str(hid), out],
                                   check=True)
                    got = np.load(out)
                    # Glorot-uniform init within its limit, zero biases
                    self.assertLessEqual(np.abs(got["0.weight"]).max(), np.sqrt(6 / (D + hid)))
                    self.assertEqual(np.abs(got["0.bias"]).max(), 0)
                    head = torch.nn.Sequential(torch.nn.Linear(D, hid), torch.nn.ReLU(),
                                               torch.nn.Linear(hid, hid)).double()
                    with torch.no_grad():
                        for i in (0, 2):
                            head[i].weight.copy_(torch.from_numpy(got[f"{i}.weight"].astype(np.float64)))
                            head[i].bias.copy_(torch.from_numpy(got[f"{i}.bias"].astype(np.float64)))
                    zt = torch.from_numpy(z.astype(np.float64)).requires_grad_(True)
                    loss = ntxent_torch(head(zt), tau)
                    loss.backward()
                    close(self, f"head loss n={n}", got["loss"], [loss.item()])
                    close(self, f"head dz n={n}", got["dz"], scale * zt.grad.numpy())
                    for i in (0, 2):
                        close(self, f"head d{i}.weight n={n}", got[f"g.{i}.weight"], scale * head[i].weight.grad.numpy())
                        close(self, f"head d{i}.bias n={n}", got[f"g.{i}.bias"], scale * head[i].bias.grad.numpy())

    def test_model_code_gradient(self):
        specs = [
            ("mnist", 1, 28, 28, 6),
            ("c6 p c4 p | c4 u c4 u c1", 1, 12, 12, 4),
            ("c5 p c3 | u c4 c2", 2, 8, 10, 4),
        ]
        rng = np.random.default_rng(3)
        cases = [(s, w, "none") for s in specs for w in (0.0, 2.5)] + [(s, 2.5, "avg") for s in specs]
        for (spec, C, H, W, N), weight, pool in cases:
            with self.subTest(spec=spec, weight=weight, pool=pool), \
                    tempfile.TemporaryDirectory(dir=os.environ.get("AESIM_TEST_TMP")) as d:
                clean = rng.uniform(0, 1, (N, C, H, W)).astype(np.float32)
                noisy = np.clip(clean + rng.normal(0, 0.2, clean.shape), 0, 1).astype(np.float32)
                np.save(os.path.join(d, "noisy.npy"), noisy)
                np.save(os.path.join(d, "clean.npy"), clean)
                tau = 0.5
                env = dict(os.environ, OMP_NUM_THREADS="1")
                subprocess.run([TOOL, "model", spec, str(C), str(H), str(W), str(N), repr(tau), repr(weight),
                                os.path.join(d, "noisy.npy"), os.path.join(d, "clean.npy"), d, pool],
                               check=True, env=env)
                init = np.load(os.path.join(d, "init.npz"))
                ref = np.load(os.path.join(d, "ref.npz"))
                model = aesim_torch.build(bytes(init["meta.arch"]).decode(), C, torch.float64)
                aesim_torch.load_npz(model, init)
                x = torch.from_numpy(noisy.astype(np.float64))
                t = torch.from_numpy(clean.astype(np.float64))
                z = model.encoder(x)
                y = model.decoder(z)
                mse = F.mse_loss(y, t)
                close(self, f"{spec} sse", ref["sse"], [mse.item() * clean.size])
                loss = mse
                if weight > 0:
                    # --contrastive-pool avg: NT-Xent of the channel means
                    cl = ntxent_torch(z.mean((2, 3)) if pool == "avg" else z.reshape(N, -1), tau)
                    close(self, f"{spec} NT-Xent", ref["closs"], [cl.item()])
                    loss = loss + weight * cl
                model.zero_grad()
                loss.backward()
                for j, conv in enumerate(model.convs):
                    close(self, f"{spec} W={weight} {pool} grad conv{j}.weight", ref[f"grad.conv{j}.weight"],
                          conv.weight.grad.numpy())
                    close(self, f"{spec} W={weight} {pool} grad conv{j}.bias", ref[f"grad.conv{j}.bias"],
                          conv.bias.grad.numpy())


if __name__ == "__main__":
    unittest.main()
