"""Byte-level text for the demo and the benchmarks: real text that every machine has.

The default corpus is the source of the running Python's standard library, read at run time, so
nothing is downloaded; ``--data`` points at any file or directory instead. Files are split into
train and validation by a hash of their path (stable across machines and runs), and batches are
random windows drawn from a generator the caller seeds, so every variant of an A/B comparison
sees the same data in the same order.
"""

from __future__ import annotations

import math
import sysconfig
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

TEXT_SUFFIXES = (".py", ".txt", ".md", ".rst")
DEFAULT_MAX_MB = 64
VALIDATION_EVERY = 20
"""One file in this many (by path hash) is held out for validation."""


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _text_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"no such file or directory: {root}")
    # Installed packages under the root are skipped (the default root, the standard library, holds
    # site-packages); a root that is itself such a folder is read.
    skip = {"site-packages", "dist-packages", "__pycache__"}
    return sorted(
        p
        for p in root.rglob("*")
        if p.suffix in TEXT_SUFFIXES and p.is_file() and not skip & set(p.relative_to(root).parts)
    )


@dataclass(frozen=True)
class ByteCorpus:
    """Train and validation bytes as ``uint8`` tensors; ``source`` says where they came from."""

    train: Tensor
    val: Tensor
    source: str

    @classmethod
    def load(cls, path: str | Path | None = None, max_bytes: int = DEFAULT_MAX_MB << 20) -> ByteCorpus:
        """Read ``path`` (default: the standard library) up to ``max_bytes`` in all. A single file
        is split 95/5 by position; a directory by file."""
        root = Path(path) if path is not None else stdlib_root()
        files = _text_files(root)
        if not files:
            raise ValueError(f"no text files ({', '.join(TEXT_SUFFIXES)}) under {root}")
        train, val, total = bytearray(), bytearray(), 0
        for f in files:
            data = f.read_bytes()[: max_bytes - total]
            total += len(data)
            if len(files) == 1:
                cut = len(data) - len(data) // VALIDATION_EVERY
                train += data[:cut]
                val += data[cut:]
            elif zlib.crc32(str(f.relative_to(root)).encode()) % VALIDATION_EVERY == 0:
                val += data
            else:
                train += data
            if total >= max_bytes:
                break
        corpus = cls(_as_tensor(train), _as_tensor(val), str(root))
        if min(corpus.train.numel(), corpus.val.numel()) < 2:
            raise ValueError(f"{root} holds too little text for a train/validation split ({total} bytes)")
        return corpus

    def batches(self, batch: int, seq_len: int, generator: torch.Generator) -> Iterator[Tensor]:
        """Endless ``[batch, seq_len + 1]`` int64 windows of the training bytes."""
        while True:
            yield _windows(self.train, batch, seq_len, generator)

    def validation_batches(self, batch: int, seq_len: int, count: int, seed: int = 1234) -> list[Tensor]:
        """A fixed set of validation windows: the same for every variant and every call."""
        generator = torch.Generator().manual_seed(seed)
        return [_windows(self.val, batch, seq_len, generator) for _ in range(count)]


def _as_tensor(data: bytearray) -> Tensor:
    return torch.frombuffer(data, dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)


def _windows(data: Tensor, batch: int, seq_len: int, generator: torch.Generator) -> Tensor:
    span = seq_len + 1
    if data.numel() < span:
        repeats = math.ceil(span / data.numel())
        data = data.repeat(repeats)
    starts = torch.randint(0, data.numel() - span + 1, (batch,), generator=generator)
    return torch.stack([data[s : s + span] for s in starts.tolist()]).long()


def bits_per_byte(nats_per_byte: float) -> float:
    """Byte-level cross-entropy in nats -> bits per byte."""
    return nats_per_byte / math.log(2)
