"""PyTorch twin of an aesim architecture spec, for the reference tests.

build(spec_text) returns an nn.Sequential-like module built only from the
spec grammar documented in include/model/model.h (cN / cNkK = Conv2d 'same' + ReLU,
p = MaxPool2d(2), u = Upsample(scale_factor=2, mode='nearest'), '|' = end of
encoder; the last conv gets a sigmoid).  load_npz copies the convJ.* arrays
of an aesim checkpoint (read with numpy alone) into it.
"""
import numpy as np
import torch
from torch import nn


class AutoEncoder(nn.Module):
    def __init__(self, spec, in_channels):
        super().__init__()
        tokens = spec.replace(",", " ").split()
        enc, dec = [], []
        convs = []
        part = enc
        c = in_channels
        conv_positions = [i for i, t in enumerate(tokens) if t.startswith("c")]
        last_conv = conv_positions[-1]
        for i, t in enumerate(tokens):
            if t == "|":
                part = dec
                continue
            if t.startswith("c"):
                if "k" in t:
                    oc, k = (int(v) for v in t[1:].split("k"))
                else:
                    oc, k = int(t[1:]), 3
                conv = nn.Conv2d(c, oc, k, stride=1, padding=k // 2, bias=True)
                convs.append(conv)
                part.append(conv)
                part.append(nn.Sigmoid() if i == last_conv else nn.ReLU())
                c = oc
            elif t == "p":
                part.append(nn.MaxPool2d(2, 2))
            elif t == "u":
                part.append(nn.Upsample(scale_factor=2, mode="nearest"))
            else:
                raise ValueError(f"bad token {t}")
        self.encoder = nn.Sequential(*enc)
        self.decoder = nn.Sequential(*dec)
        self.convs = convs

    def forward(self, x):
        return self.decoder(self.encoder(x))


def build(spec, in_channels, dtype=torch.float32):
    return AutoEncoder(spec, in_channels).to(dtype)


def load_npz(model, arrays, prefix=""):
    """Copies aesim checkpoint arrays (numpy) into the model's convs."""
    with torch.no_grad():
        for j, conv in enumerate(model.convs):
            conv.weight.copy_(torch.from_numpy(np.asarray(arrays[f"{prefix}conv{j}.weight"])))
            conv.bias.copy_(torch.from_numpy(np.asarray(arrays[f"{prefix}conv{j}.bias"])))
