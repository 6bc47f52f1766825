"""Video ViT encoder with Turbo token dropout. Pure PyTorch: no distributed or logging code."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from turbo_ds.config import ModelConfig
from turbo_ds.turbo import TokenSelector


def sinusoid_table(num_tokens: int, dim: int) -> torch.Tensor:
    """Fixed 1-D sin/cos table over the flattened (t, h, w) token index, as in VideoMAE."""
    pos = torch.arange(num_tokens, dtype=torch.float64)[:, None]  # (N, 1)
    freq = 10000 ** (-2 * (torch.arange(dim) // 2) / dim)  # (D,)
    angles = pos * freq  # (N, D)
    table = torch.where(torch.arange(dim) % 2 == 0, angles.sin(), angles.cos())
    return table.float()[None]  # (1, N, D)


class TubeletEmbed(nn.Module):
    """Cuts a clip into tubelets and projects only the kept ones.

    The projection is stored as a Conv3d (the usual checkpoint layout) but applied as a
    Linear to gathered raw patches, so dropped tokens cost nothing, not even embedding.
    """

    def __init__(self, cfg: ModelConfig, in_chans: int = 3):
        super().__init__()
        self.t, self.p = cfg.tubelet_size, cfg.patch_size
        self.proj = nn.Conv3d(in_chans, cfg.width, kernel_size=(self.t, self.p, self.p), stride=(self.t, self.p, self.p))

    def patchify(self, video: torch.Tensor) -> torch.Tensor:
        b, c, f, h, w = video.shape  # (B, C, F, H, W)
        t, p = self.t, self.p
        x = video.reshape(b, c, f // t, t, h // p, p, w // p, p)  # (B, C, F', t, H', p, W', p)
        x = x.permute(0, 2, 4, 6, 1, 3, 5, 7)  # (B, F', H', W', C, t, p, p): Conv3d weight order
        return x.reshape(b, (f // t) * (h // p) * (w // p), c * t * p * p)  # (B, N, C*t*p*p)

    def embed(self, patches: torch.Tensor) -> torch.Tensor:
        return F.linear(patches, self.proj.weight.flatten(1), self.proj.bias)  # (B, K, D)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads)  # (B, N, 3, H, Dh)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # 3 x (B, H, N, Dh)
        x = F.scaled_dot_product_attention(q, k, v)  # (B, H, N, Dh)
        return self.proj(x.transpose(1, 2).reshape(b, n, d))  # (B, N, D)


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VideoViT(nn.Module):
    """Tubelet embedding + space-time position embedding + blocks; returns mean-pooled features."""

    def __init__(self, cfg: ModelConfig, keep_ratio: float = 1.0, eval_keep_ratio: float = 1.0):
        super().__init__()
        self.patch_embed = TubeletEmbed(cfg)
        num_tokens = (cfg.num_frames // cfg.tubelet_size) * (cfg.img_size // cfg.patch_size) ** 2
        if cfg.pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, cfg.width))
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        else:  # fixed: positions are informative from the first step
            self.register_buffer("pos_embed", sinusoid_table(num_tokens, cfg.width), persistent=False)
        self.turbo = TokenSelector(keep_ratio, eval_keep_ratio)
        self.blocks = nn.ModuleList(Block(cfg.width, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.width)
        self.num_tokens, self.width = num_tokens, cfg.width

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embed.patchify(video)  # (B, N, P)
        assert patches.shape[1] == self.num_tokens, f"clip gives {patches.shape[1]} tokens, model expects {self.num_tokens}"
        pos = self.pos_embed.expand(patches.shape[0], -1, -1)  # (B, N, D)
        keep = self.turbo(patches)
        if keep is not None:  # gather raw patches and their positions before any compute
            patches = patches.gather(1, keep[..., None].expand(-1, -1, patches.shape[-1]))  # (B, K, P)
            pos = pos.gather(1, keep[..., None].expand(-1, -1, self.width))  # (B, K, D)
        x = self.patch_embed.embed(patches)  # (B, K, D)
        x = x + pos.to(x.dtype)  # a fixed table is a buffer, which engines may leave in fp32
        for block in self.blocks:
            x = block(x)
        return self.norm(x.mean(dim=1))  # (B, D)


class VideoClassifier(nn.Module):
    def __init__(self, encoder: VideoViT, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.width, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(video))  # (B, num_classes)
