"""Write the torch ``.pth`` fixtures of tests/test_io_torch.py (needs torch; the tests do not).

How they were made (torch 2.14.1, torchvision 0.29.1, Python 3.11, Linux x86-64,
little-endian), from the repository root, with torch in a venv outside the repo:

    python3 -m venv /work/torchvenv
    /work/torchvenv/bin/pip install torch==2.14.1 torchvision==0.29.1
    /work/torchvenv/bin/python tests/data/make_torch_fixtures.py

It writes into tests/data/:

- ``tiny_zip.pth``     the state dict below, ``torch.save`` default (zip) layout;
- ``tiny_legacy.pth``  the same, ``_use_new_zipfile_serialization=False`` (legacy layout);
- ``tiny_expected.npz`` the expected arrays, written from torch's own tensors
  (``tensor.numpy()``; bfloat16 via ``tensor.float().numpy()``, which is exact),
  never from our loader.

The state dict (a few KB) covers what a reader can get wrong: a real module's
``state_dict()`` (an OrderedDict carrying ``_metadata``, a BatchNorm with a 0-d
int64 ``num_batches_tracked``), float32, float16, float64, bfloat16, int64, int32,
int16, int8, uint8, bool, an ``nn.Parameter``, and five tensors that share one
storage: the base, its transpose, a slice with a storage offset, a column
(stride 5) and a stride-0 expansion. The values are random (seeded), so a
wrong offset or stride cannot give the right numbers by accident.
"""
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent


def state_dict():
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1), torch.nn.BatchNorm2d(2))
    module.train()
    module(torch.randn(4, 3, 2, 2))  # one training step: running stats and num_batches_tracked = 1
    sd = module.state_dict()  # OrderedDict with ._metadata, conv/BN weights, 0-d int64
    assert hasattr(sd, "_metadata") and sd["1.num_batches_tracked"].dim() == 0
    base = torch.randn(3, 5)
    sd.update(OrderedDict([
        ("half", torch.randn(5).half()),
        ("double", torch.randn(2, 3, dtype=torch.float64)),
        ("bfloat16", torch.randn(4).bfloat16()),
        ("long", torch.tensor([-(2 ** 40), 3, 7])),
        ("int", torch.tensor([-5, 0, 2 ** 30], dtype=torch.int32)),
        ("short", torch.tensor([-300, 7], dtype=torch.int16)),
        ("char", torch.tensor([-128, 127], dtype=torch.int8)),
        ("byte", torch.tensor([0, 200, 255], dtype=torch.uint8)),
        ("bool", torch.tensor([True, False, True, True])),
        ("param", torch.nn.Parameter(torch.randn(3))),
        # five views of one storage of 15 floats
        ("view.base", base),
        ("view.t", base.t()),                  # (5, 3), strides (1, 5)
        ("view.slice", base[1:, 1:4]),         # (2, 3), offset 6, strides (5, 1)
        ("view.col", base[:, 2]),              # (3,), offset 2, stride 5
        ("view.expand", base[2, 1:2].expand(2, 4)),  # (2, 4), offset 11, strides (0, 0)
    ]))
    sd._metadata = module.state_dict()._metadata
    return sd


def main():
    sd = state_dict()
    assert sd["view.t"].untyped_storage().data_ptr() == sd["view.base"].untyped_storage().data_ptr()
    assert not sd["view.t"].is_contiguous() and sd["view.slice"].storage_offset() == 6
    torch.save(sd, HERE / "tiny_zip.pth")
    torch.save(sd, HERE / "tiny_legacy.pth", _use_new_zipfile_serialization=False)
    expected = {k: (v.detach().float() if v.dtype == torch.bfloat16 else v.detach()).numpy() for k, v in sd.items()}
    np.savez(HERE / "tiny_expected.npz", **expected)
    for name in ("tiny_zip.pth", "tiny_legacy.pth", "tiny_expected.npz"):
        print(name, (HERE / name).stat().st_size, "bytes")
    # both files load back in torch, equal to the source
    for name in ("tiny_zip.pth", "tiny_legacy.pth"):
        back = torch.load(HERE / name, weights_only=True)
        assert all(torch.equal(back[k], sd[k]) for k in sd)


if __name__ == "__main__":
    main()
