"""One training loop for every A/B comparison: the demo, ``quartet-bench``, the accuracy and
speed studies and the distributed runs all call :func:`train`.

Fairness is the point: every variant starts from the same initial weights (same seed), reads the
same batches in the same order (a data generator of its own), and draws its backward randomness
from a default generator reseeded to the same state. Only the compiled step differs.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch._inductor.config
from torch import Tensor, nn

from .data import ByteCorpus, bits_per_byte
from .models import ModelSpec
from .parallel import backward_seed, global_mean, local_rows, wrap_parallel
from .variants import Kind, Variant, backend_for, swap_in_fouroversix

log = logging.getLogger("quartet_bench")


@dataclass(frozen=True)
class TrainSettings:
    batch: int = 8
    seq_len: int = 256
    steps: int = 100
    warmup_steps: int = 3
    """Steps left out of the timing (compilation and allocator warm-up happen in them)."""
    lr: float = 3e-3
    eval_every: int = 25
    eval_batches: int = 8
    seed: int = 0
    """Initial weights and data order."""
    backward_seed: int | None = None
    """Backward randomness (``None``: ``seed + 1``); change it alone to measure run-to-run noise."""
    autocast_bf16: bool = True
    parallel: str = "none"
    """``none``, ``ddp`` or ``fsdp2`` (launched under ``torchrun``)."""
    compile_per_block: bool = False
    """FSDP2: compile each block separately (torchtitan's layout) instead of the whole model."""
    compile_mode: str | None = None
    """``torch.compile(mode=...)`` of every compiled variant, e.g. ``reduce-overhead`` (CUDA graphs)."""


@dataclass
class RunResult:
    variant: str
    model: str
    parameters: int
    losses: list[float] = field(default_factory=list)
    val_bpb: list[tuple[int, float]] = field(default_factory=list)
    step_ms: list[float] = field(default_factory=list)
    compile_s: float = 0.0
    peak_memory_bytes: int | None = None
    graphs: int = 0
    graph_breaks: int = 0
    recompiles: int = 0
    tokens_per_step: int = 0
    error: str | None = None
    backward_seed: int | None = None
    """The seed asked for (``None``: the default, ``seed + 1``)."""

    @property
    def label(self) -> str:
        """Row name in tables and plots: the variant, and the backward seed when one was asked for."""
        return self.variant if self.backward_seed is None else f"{self.variant} seed {self.backward_seed}"

    @property
    def median_step_ms(self) -> float:
        return statistics.median(self.step_ms) if self.step_ms else math.nan

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_per_step / (self.median_step_ms / 1e3) if self.step_ms else math.nan

    @property
    def final_loss(self) -> float:
        tail = self.losses[-10:]
        return sum(tail) / len(tail) if tail else math.nan

    @property
    def final_val_bpb(self) -> float:
        return self.val_bpb[-1][1] if self.val_bpb else math.nan

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunResult:
        """Inverse of :meth:`to_json` (derived fields are recomputed, not read)."""
        result = cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        result.val_bpb = [tuple(point) for point in result.val_bpb]
        return result

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(
            median_step_ms=self.median_step_ms,
            tokens_per_s=self.tokens_per_s,
            final_loss=self.final_loss,
            final_val_bpb=self.final_val_bpb,
        )
        return out


class Timer:
    """Per-step wall time: CUDA events on GPU (no host sync inside the step), perf_counter on CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def start(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def elapsed_ms(self, start: Any) -> float:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        return (time.perf_counter() - start) * 1e3


def _compile(model: nn.Module, backend: Any, settings: TrainSettings, mode: str | None) -> nn.Module:
    if backend is None:
        return model
    if settings.compile_per_block:
        inner = model.module if hasattr(model, "module") else model
        for block in inner.blocks:
            block.compile(backend=backend, mode=mode)
        return model
    return torch.compile(model, backend=backend, mode=mode)


def evaluate(step_fn: nn.Module, batches: list[Tensor], device: torch.device, settings: TrainSettings) -> float:
    """Validation bits per byte of the (compiled) model on fixed batches."""
    total = torch.zeros((), device=device)
    with torch.no_grad(), _autocast(device, settings):
        for tokens in batches:
            torch.compiler.cudagraph_mark_step_begin()
            total += global_mean(step_fn(local_rows(tokens).to(device)).float())
    return bits_per_byte(float(total) / len(batches))


def _autocast(device: torch.device, settings: TrainSettings) -> torch.autocast:
    enabled = settings.autocast_bf16 and settings.parallel != "fsdp2"
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def _lr_lambda(settings: TrainSettings) -> Callable[[int], float]:
    warmup = max(1, settings.steps // 10)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, settings.steps - warmup)
        return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))

    return factor


def train(
    variant: Variant,
    spec: ModelSpec,
    corpus: ByteCorpus,
    settings: TrainSettings,
    device: torch.device,
    quartet_options: dict[str, Any] | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> RunResult:
    """Train ``spec`` compiled as ``variant`` and measure it. Errors of optional variants (a
    missing package, a peer that cannot run here) come back in ``RunResult.error``."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()  # reset() keeps them: breaks would add up across variants
    torch.manual_seed(settings.seed)
    result = RunResult(variant.name, spec.label, 0, backward_seed=settings.backward_seed)
    result.tokens_per_step = settings.batch * settings.seq_len
    backend = None
    try:  # a variant that cannot run here is a "not run" row; the comparison goes on
        model = spec.build().to(device)
        result.parameters = sum(p.numel() for p in model.parameters())
        if variant.kind is Kind.FOUROVERSIX:
            swap_in_fouroversix(model)
        backend = backend_for(variant, quartet_options or {})
        model = wrap_parallel(model, settings.parallel, settings.autocast_bf16, device)
        step_fn = _compile(model, backend, settings, None if variant.kind is Kind.TENSORRT else settings.compile_mode)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        runner = _train_steps if variant.trains else _forward_steps
        # Inductor's caches off: every variant compiles cold, whichever ran before it.
        with torch._inductor.config.patch(force_disable_caches=True):
            runner(step_fn, model, corpus, settings, device, result, backend, progress)
        result.graphs = backend.graphs if backend else 0
    except Exception as exc:
        log.warning("variant %s failed", variant.name, exc_info=True)
        message = str(exc).strip().splitlines()
        result.error = f"{type(exc).__name__}: {message[0] if message else ''}"
        result.step_ms.clear()
    if device.type == "cuda":
        result.peak_memory_bytes = torch.cuda.max_memory_allocated(device)
    result.graph_breaks = sum(torch._dynamo.utils.counters["graph_break"].values())
    return result


Progress = Callable[[int, float], None]


def _record_step(
    result: RunResult,
    settings: TrainSettings,
    step: int,
    loss: float,
    wall_s: float,
    elapsed_ms: float,
    progress: Progress | None,
) -> None:
    """Bookkeeping shared by training and forward-only runs: the first step's wall time holds the
    compilation; steps after the warm-up are timed."""
    result.losses.append(loss)
    if step == 0:
        result.compile_s = wall_s
    if step >= settings.warmup_steps:
        result.step_ms.append(elapsed_ms)
    if progress:
        progress(step, loss)


def optimizer_for(params: list[nn.Parameter], settings: TrainSettings) -> torch.optim.Optimizer:
    """AdamW, fused on CUDA (one kernel per step instead of one per parameter group and op)."""
    fused = all(p.is_cuda for p in params)
    return torch.optim.AdamW(params, lr=settings.lr, betas=(0.9, 0.95), weight_decay=0.1, fused=fused)


def train_step(
    step_fn: nn.Module,
    tokens: Tensor,
    params: list[nn.Parameter],
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    settings: TrainSettings,
) -> Tensor:
    """One optimizer step on ``tokens``: forward under autocast, backward, clipping to norm 1,
    the update. Returns the loss tensor (read it before the next step: a CUDA graph reuses it)."""
    torch.compiler.cudagraph_mark_step_begin()  # a new iteration for CUDA-graph trees; else a no-op
    with _autocast(device, settings):
        loss = step_fn(tokens)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


def _train_steps(
    step_fn: nn.Module,
    model: nn.Module,
    corpus: ByteCorpus,
    settings: TrainSettings,
    device: torch.device,
    result: RunResult,
    backend: Any,
    progress: Progress | None,
) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = optimizer_for(params, settings)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(settings))
    data = corpus.batches(settings.batch, settings.seq_len, torch.Generator().manual_seed(settings.seed))
    val = corpus.validation_batches(settings.batch, settings.seq_len, settings.eval_batches)
    timer = Timer(device)
    # The backward's random stream: the same for every variant.
    torch.manual_seed(backward_seed(settings.seed + 1 if settings.backward_seed is None else settings.backward_seed))
    for step in range(settings.steps):
        tokens = local_rows(next(data)).to(device, non_blocking=True)
        graphs_before = backend.graphs if backend else 0
        wall, start = time.perf_counter(), timer.start()
        loss = train_step(step_fn, tokens, params, optimizer, device, settings)
        schedule.step()
        elapsed, wall_s = timer.elapsed_ms(start), time.perf_counter() - wall
        loss = float(global_mean(loss.detach().float()))  # now: a CUDA graph reuses its output
        if step > 0 and backend:
            result.recompiles += backend.graphs - graphs_before
        if (step + 1) % settings.eval_every == 0 or step + 1 == settings.steps:
            result.val_bpb.append((step + 1, evaluate(step_fn, val, device, settings)))
        _record_step(result, settings, step, loss, wall_s, elapsed, progress)
    if result.step_ms:
        result.compile_s = max(0.0, result.compile_s - result.median_step_ms / 1e3)


def _forward_steps(
    step_fn: nn.Module,
    model: nn.Module,
    corpus: ByteCorpus,
    settings: TrainSettings,
    device: torch.device,
    result: RunResult,
    backend: Any,
    progress: Progress | None,
) -> None:
    data = corpus.batches(settings.batch, settings.seq_len, torch.Generator().manual_seed(settings.seed))
    timer = Timer(device)
    with torch.no_grad():
        for step in range(settings.steps):
            tokens = local_rows(next(data)).to(device)
            wall, start = time.perf_counter(), timer.start()
            with _autocast(device, settings):
                loss = step_fn(tokens)
            elapsed = timer.elapsed_ms(start)
            _record_step(result, settings, step, float(loss), time.perf_counter() - wall, elapsed, progress)
