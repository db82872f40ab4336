"""A small CNN on (a subset of) Fashion-MNIST, deterministic, resumable at any step.

A step is one minibatch. The examples of epoch ``e`` come in the order
``torch_helper.epoch_order(n, seed, e)``, so the batch of step ``t`` depends only on
``(seed, t)``; the state saved between stages holds the model, the optimizer's momentum,
every RNG (dropout draws from torch's) and the data-loader position, through
``torch_helper``. Deterministic algorithms are on, so a stage tree gives bit-identical
results to training each trial alone, on CPU and on a GPU.

Static params: ``seed`` (0), ``train_size`` (4096 examples of the 60k), ``test_size``
(1000 of the 10k), ``batch`` (64), ``width`` (16 channels in the first conv layer),
``data_dir`` (default ``$STAGETREE_FASHION_MNIST`` or
``/usr/share/datasets/fashion-mnist``, where Debian's ``dataset-fashion-mnist`` puts
the idx files), ``device`` (``cuda`` when available, else ``cpu``).
Hyperparameters (per step): ``lr`` (required), ``momentum`` (0.9), ``weight_decay`` (0).

Run it under stagetree with ``STAGETREE_TRAINER=torch_mnist:FashionMnistTrainer`` and
this directory on ``PYTHONPATH``.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from stagetree import Hp, Trainer, torch_helper

DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"
MEAN, STD = 0.2860, 0.3530


def _open(path: Path) -> bytes:
    for candidate in (path, path.with_name(path.name + ".gz")):
        if candidate.exists():
            raw = candidate.read_bytes()
            return gzip.decompress(raw) if candidate.suffix == ".gz" else raw
    raise FileNotFoundError(
        f"no {path.name}[.gz] in {path.parent} (apt-get install dataset-fashion-mnist, "
        "or set params.data_dir / STAGETREE_FASHION_MNIST)"
    )


def read_idx(path: Path, limit: int) -> torch.Tensor:
    """The first ``limit`` items of an idx file (images: N x 28 x 28, labels: N)."""
    data = _open(path)
    zero, dtype, ndim = struct.unpack_from(">HBB", data, 0)
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path}: not an idx file of unsigned bytes")
    dims = list(struct.unpack_from(f">{ndim}I", data, 4))
    n = min(limit, dims[0])
    item = 1
    for d in dims[1:]:
        item *= d
    offset = 4 + 4 * ndim
    body = bytearray(data[offset : offset + n * item])
    return torch.frombuffer(body, dtype=torch.uint8).reshape([n, *dims[1:]]).clone()


class Net(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        # Strided convolutions instead of max pooling: max_pool2d's CUDA backward has no
        # deterministic implementation in some PyTorch versions.
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),  # 14 x 14
            nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1),  # 7 x 7
            nn.ReLU(),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * width * 7 * 7, 64),
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.Linear(64, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class FashionMnistTrainer(Trainer):
    # Loaded data by (dir, sizes, device): the process is reused across trials.
    _data: dict[tuple[Any, ...], tuple[torch.Tensor, ...]] = {}

    def init(self, params: Mapping[str, Any], seed: int) -> None:
        torch_helper.deterministic(seed)
        self.seed = seed
        self.batch = int(params.get("batch", 64))
        want = params.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
        self.device = torch.device(want)
        data_dir = Path(
            params.get("data_dir") or os.environ.get("STAGETREE_FASHION_MNIST") or DEFAULT_DATA_DIR
        )
        self.x, self.y, self.test_x, self.test_y = self._load_data(
            data_dir, int(params.get("train_size", 4096)), int(params.get("test_size", 1000))
        )
        self.steps_per_epoch = self.x.shape[0] // self.batch
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"train_size {self.x.shape[0]} is smaller than one batch ({self.batch})"
            )
        self.model = Net(int(params.get("width", 16))).to(self.device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.0, momentum=0.9)
        self.step = 0
        self.position = {"epoch": 0, "batch": 0}

    def _load_data(
        self, data_dir: Path, train_size: int, test_size: int
    ) -> tuple[torch.Tensor, ...]:
        key = (str(data_dir), train_size, test_size, str(self.device))
        if key not in self._data:

            def images(name: str, n: int) -> torch.Tensor:
                x = read_idx(data_dir / name, n).float().div_(255.0)
                return ((x - MEAN) / STD).unsqueeze(1).to(self.device)

            def labels(name: str, n: int) -> torch.Tensor:
                return read_idx(data_dir / name, n).long().to(self.device)

            self._data[key] = (
                images("train-images-idx3-ubyte", train_size),
                labels("train-labels-idx1-ubyte", train_size),
                images("t10k-images-idx3-ubyte", test_size),
                labels("t10k-labels-idx1-ubyte", test_size),
            )
        return self._data[key]

    def train(self, start: int, end: int, hp: Hp) -> None:
        if start != self.step:
            raise RuntimeError(f"asked to train from step {start}, the state is at {self.step}")
        self.model.train()
        n = self.x.shape[0]
        order = None
        for t in range(start, end):
            h = hp(t)
            for g in self.opt.param_groups:
                g["lr"] = float(h["lr"])
                g["momentum"] = float(h.get("momentum", 0.9))
                g["weight_decay"] = float(h.get("weight_decay", 0.0))
            epoch, b = self.position["epoch"], self.position["batch"]
            if order is None or b == 0:
                order = torch_helper.epoch_order(n, self.seed, epoch).to(self.device)
            idx = order[b * self.batch : (b + 1) * self.batch]
            loss = nn.functional.cross_entropy(self.model(self.x[idx]), self.y[idx])
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.step = t + 1
            b += 1
            self.position = (
                {"epoch": epoch + 1, "batch": 0}
                if b == self.steps_per_epoch
                else {"epoch": epoch, "batch": b}
            )

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        logits = torch.cat([self.model(xb) for xb in self.test_x.split(500)])
        loss = nn.functional.cross_entropy(logits, self.test_y).item()
        accuracy = (logits.argmax(dim=1) == self.test_y).float().mean().item()
        return {"accuracy": accuracy, "loss": loss, "step": float(self.step)}

    def save(self) -> bytes:
        return torch_helper.capture(
            self.model, self.opt, position=self.position, extra={"step": self.step}
        )

    def load(self, data: bytes) -> None:
        restored = torch_helper.restore(data, self.model, self.opt, map_location=self.device)
        self.position = restored.position
        self.step = restored.extra["step"]
