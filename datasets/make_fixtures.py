#!/usr/bin/python3
"""make_fixtures.py - writes the tiny example datasets of datasets/fixtures/
(a few KB in all) with numpy and Pillow, one of each source kind, for demos
and for trying the source syntax by hand:

  fixtures/folder/{cat,dog}/*.png|jpg  image folder (2 classes, mixed sizes, one RGBA)
  fixtures/list.txt                    list file over those images, with labels
  fixtures/tiny32.npz                  downsampled-ImageNet layout: data (6, 3*32*32), labels 1..1000
  fixtures/nhwc.npy                    uint8 (4, 8, 8, 3)
  fixtures/cifar10/data_batch_1.bin    CIFAR-10 binary batch of 2 records
Deterministic (fixed seed): re-running gives the same files.
Usage: /usr/bin/python3 datasets/make_fixtures.py
"""
import os

import numpy as np
from PIL import Image

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def main():
    rng = np.random.default_rng(2024)
    os.makedirs(HERE, exist_ok=True)
    names = []
    for label, cls in enumerate(("cat", "dog")):
        d = os.path.join(HERE, "folder", cls)
        os.makedirs(d, exist_ok=True)
        for i, (h, w) in enumerate(((24, 32), (32, 24), (20, 20))):
            img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            if i == 2:
                path = os.path.join(d, "%d.jpg" % i)
                Image.fromarray(img).save(path, quality=90)
            elif i == 1:
                path = os.path.join(d, "%d.png" % i)
                alpha = rng.integers(0, 256, (h, w, 1), dtype=np.uint8)
                Image.fromarray(np.concatenate([img, alpha], axis=2), "RGBA").save(path)
            else:
                path = os.path.join(d, "%d.png" % i)
                Image.fromarray(img).save(path)
            names.append((os.path.relpath(path, HERE), label))
    with open(os.path.join(HERE, "list.txt"), "w") as f:
        f.write("# image path, optional integer label\n")
        for p, label in names:
            f.write("%s %d\n" % (p, label))
    data = rng.integers(0, 256, (6, 3 * 32 * 32), dtype=np.uint8)
    np.savez(os.path.join(HERE, "tiny32.npz"), data=data, labels=rng.integers(1, 1001, 6))
    np.save(os.path.join(HERE, "nhwc.npy"), rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8))
    os.makedirs(os.path.join(HERE, "cifar10"), exist_ok=True)
    rec = np.concatenate([rng.integers(0, 10, (2, 1), dtype=np.uint8),
                          rng.integers(0, 256, (2, 3072), dtype=np.uint8)], axis=1)
    with open(os.path.join(HERE, "cifar10", "data_batch_1.bin"), "wb") as f:
        f.write(rec.tobytes())


if __name__ == "__main__":
    main()
