"""The models of the benchmarks: a byte-level Llama family (RMSNorm, rotary attention, SwiGLU MLP)
built from plain ``nn.Linear`` layers, so the backend has real projections to find, or any
``transformers`` model built from its config; both wrapped with their loss."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int = 256
    dim: int = 128
    n_layers: int = 2
    n_heads: int = 4
    ffn_dim: int = 384
    max_seq_len: int = 1024
    rope_theta: float = 10000.0


PRESETS: dict[str, LlamaConfig] = {
    "tiny": LlamaConfig(),
    "30m": LlamaConfig(dim=512, n_layers=8, n_heads=8, ffn_dim=1536, max_seq_len=2048),
    "125m": LlamaConfig(dim=768, n_layers=12, n_heads=12, ffn_dim=3328, max_seq_len=2048),
    "350m": LlamaConfig(dim=1024, n_layers=24, n_heads=16, ffn_dim=3328, max_seq_len=2048),
    "1b": LlamaConfig(dim=2048, n_layers=16, n_heads=32, ffn_dim=8192, max_seq_len=2048),
}
"""The built-in byte-level family. Every width is a multiple of 128, so no matmul needs padding;
``1b`` has the projection shapes of Llama-3.2-1B (K, N in {2048, 8192})."""


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = x.float() * torch.rsqrt(x.float().square().mean(-1, keepdim=True) + self.eps)
        return (normed * self.weight.float()).to(x.dtype)


def rotary_tables(head_dim: int, max_seq_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    freqs = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), freqs)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x [B, H, S, D]`` rotated pairwise by position (halves convention)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    cos, sin = cos[: x.shape[-2]], sin[: x.shape[-2]]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.q_proj = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.k_proj = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.v_proj = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.o_proj = nn.Linear(cfg.dim, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = (
            proj(x).view(b, s, self.n_heads, d // self.n_heads).transpose(1, 2)
            for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(out.transpose(1, 2).reshape(b, s, d))


class MLP(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.up_proj = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_dim, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.attn_norm, self.attn = RMSNorm(cfg.dim), Attention(cfg)
        self.mlp_norm, self.mlp = RMSNorm(cfg.dim), MLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


class Llama(nn.Module):
    """``tokens [B, S] -> logits [B, S, vocab]``."""

    def __init__(self, cfg: LlamaConfig = LlamaConfig()):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        cos, sin = rotary_tables(cfg.dim // cfg.n_heads, cfg.max_seq_len, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for layer in self.layers:
            x = layer(x, self.rope_cos, self.rope_sin)
        return self.lm_head(self.norm(x))


@dataclass(frozen=True)
class ModelSpec:
    """A built-in preset (``tiny``, ``30m``, ``125m``, ``350m``, ``1b``) or a ``transformers``
    config: a ``model_type`` name (``llama``, ``gpt2``...) or a path to a ``config.json``."""

    preset: str = "tiny"
    hf_config: str | None = None
    hf_overrides: tuple[tuple[str, Any], ...] = ()

    def build(self) -> nn.Module:
        if self.hf_config is None:
            if self.preset not in PRESETS:
                raise ValueError(f"unknown model preset {self.preset!r}; choose from {', '.join(PRESETS)}")
            return CausalLMLoss(Llama(PRESETS[self.preset]))
        from transformers import AutoConfig, AutoModelForCausalLM

        overrides = dict(self.hf_overrides)
        if self.hf_config.endswith(".json"):
            config = AutoConfig.from_pretrained(self.hf_config, **overrides)
        else:
            config = AutoConfig.for_model(self.hf_config, **overrides)
        if config.vocab_size < 256:
            raise ValueError(f"{self.hf_config}: vocab_size {config.vocab_size} < 256 cannot hold byte tokens")
        return CausalLMLoss(AutoModelForCausalLM.from_config(config))

    @property
    def label(self) -> str:
        return self.preset if self.hf_config is None else f"hf:{self.hf_config}"


class CausalLMLoss(nn.Module):
    """``tokens [B, S+1] -> mean next-byte cross-entropy`` (fp32), so the compiled graph holds the
    whole forward including the loss, for built-in and ``transformers`` models alike."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens: Tensor) -> Tensor:
        out = self.model(tokens[:, :-1])
        logits = out if isinstance(out, Tensor) else out.logits
        return F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())

    @property
    def blocks(self) -> list[nn.Module]:
        """The repeated transformer blocks (what FSDP2 shards and per-block compile compiles)."""
        for name in ("layers", "h"):
            for module in self.model.modules():
                if isinstance(getattr(module, name, None), nn.ModuleList):
                    return list(getattr(module, name))
        return []
