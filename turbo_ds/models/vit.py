"""Video ViT encoder with Turbo token dropout. Pure PyTorch: no distributed or logging code.

Two layouts (``model.arch``), so that either family's weights load without conversion loss:

* ``videomae`` (``turbo_ds.models.pretrained``): pre-norm blocks, exact GELU, a fixed or learned
  space-time position table, mean pooling followed by a LayerNorm (VideoMAE's ``fc_norm``).
* ``clip`` (``turbo_ds.models.clip``): CLIP's image encoder made a video encoder. A class token
  (never dropped: Turbo selects among the patch tokens only), CLIP's spatial position table
  plus a temporal one that starts at zero, a LayerNorm before the blocks (``ln_pre``), QuickGELU,
  and the class token's output normed (``ln_post``) as the feature. Attention keys of the class
  token get a bias log(K / H'W') for K patch tokens: the class token then weighs against K
  tokens as CLIP's did against the H'W' patches of one image (log T' with every token kept), so
  a clip of T identical frames gives exactly CLIP's image embedding of that frame.
"""

from __future__ import annotations

import math
import os
import shutil

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from turbo_ds.config import ConfigError, ModelConfig, TurboConfig
from turbo_ds.turbo import Grid, PatchShape, TokenSelector


def sinusoid_table(num_tokens: int, dim: int) -> torch.Tensor:
    """Fixed 1-D sin/cos table over the flattened (t, h, w) token index, as in VideoMAE.

    Computed in float64 (as VideoMAE's numpy code) so large positions match it to float32 precision.
    """
    pos = torch.arange(num_tokens, dtype=torch.float64)[:, None]  # (N, 1)
    freq = 10000.0 ** (-2 * (torch.arange(dim, dtype=torch.float64) // 2) / dim)  # (D,)
    angles = pos * freq  # (N, D)
    table = torch.where(torch.arange(dim) % 2 == 0, angles.sin(), angles.cos())
    return table.float()[None]  # (1, N, D)


def interpolate_pos_embed(table: torch.Tensor, src: Grid, dst: Grid) -> torch.Tensor:
    """Resample a learned (1, T0*H0*W0, D) table on its 3-D grid to (1, T*H*W, D), trilinearly."""
    (t0, h0, w0), (t, h, w) = src, dst
    assert table.shape[1] == t0 * h0 * w0, f"table of {table.shape[1]} positions does not fill grid {src}"
    if src == dst:
        return table
    d = table.shape[-1]
    grid = table.float().reshape(1, t0, h0, w0, d).permute(0, 4, 1, 2, 3)  # (1, D, T0, H0, W0)
    grid = F.interpolate(grid, size=(t, h, w), mode="trilinear", align_corners=False)  # (1, D, T, H, W)
    return grid.permute(0, 2, 3, 4, 1).reshape(1, t * h * w, d).to(table.dtype)  # (1, N, D)


class TubeletEmbed(nn.Module):
    """Cuts a clip into tubelets and projects only the kept ones.

    The projection is stored as a Conv3d (the usual checkpoint layout) but applied as a
    Linear to gathered raw patches, so dropped tokens cost nothing, not even embedding.
    With every token kept this is as fast as the Conv3d on CPU (measured), so there is one path.
    """

    def __init__(self, cfg: ModelConfig, in_chans: int = 3, bias: bool = True):
        super().__init__()
        self.t, self.p = cfg.tubelet_size, cfg.patch_size
        self.patch_shape: PatchShape = (in_chans, self.t, self.p, self.p)
        self.proj = nn.Conv3d(in_chans, cfg.width, kernel_size=(self.t, self.p, self.p), stride=(self.t, self.p, self.p),
                              bias=bias)

    def patchify(self, video: torch.Tensor) -> torch.Tensor:
        b, c, f, h, w = video.shape  # (B, C, F, H, W)
        t, p = self.t, self.p
        x = video.reshape(b, c, f // t, t, h // p, p, w // p, p)  # (B, C, F', t, H', p, W', p)
        x = x.permute(0, 2, 4, 6, 1, 3, 5, 7)  # (B, F', H', W', C, t, p, p): Conv3d weight order
        return x.reshape(b, (f // t) * (h // p) * (w // p), c * t * p * p)  # (B, N, C*t*p*p)

    def embed(self, patches: torch.Tensor) -> torch.Tensor:
        return F.linear(patches, self.proj.weight.flatten(1), self.proj.bias)  # (B, K, D)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, qkv_bias: bool = True):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        """``attn_bias``: an additive attention bias broadcast to (B, heads, N, N), or None."""
        b, n, d = x.shape
        device = x.device.type  # the meta device (the GPU-rule tests) has no autocast at all
        if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
            x = x.to(torch.get_autocast_dtype(device))  # cast once: each F.linear would keep its own copy for backward
        # One projection per row block of the fused weight: each of q, k, v comes out (B, N, D)-contiguous,
        # which CPU attention runs ~5% faster on than on strided views of a single (B, N, 3D) output.
        biases = self.qkv.bias.chunk(3) if self.qkv.bias is not None else (None,) * 3
        q, k, v = (F.linear(x, w, bias).view(b, n, self.heads, d // self.heads).transpose(1, 2)  # (B, H, N, Dh)
                   for w, bias in zip(self.qkv.weight.chunk(3), biases))
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias)  # (B, H, N, Dh), scaled by Dh ** -0.5
        return self.proj(x.transpose(1, 2).reshape(b, n, d))  # (B, N, D)


class QuickGELU(nn.Module):
    """CLIP's activation, x * sigmoid(1.702 x): CLIP's weights were trained with it, not exact GELU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class DropPath(nn.Module):
    """Stochastic depth: drops a residual branch for whole samples, rescaling the survivors."""

    def __init__(self, p: float):
        super().__init__()
        assert 0 < p < 1, f"drop path rate {p} outside (0, 1)"
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        keep = torch.rand(x.shape[0], *([1] * (x.ndim - 1)), device=x.device) >= self.p  # (B, 1, 1)
        return x * keep.to(x.dtype) / (1 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, qkv_bias: bool = True, norm_eps: float = 1e-6,
                 drop_path: float = 0.0, act: type[nn.Module] = nn.GELU):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=norm_eps), nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, heads, qkv_bias)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), act(), nn.Linear(hidden, dim))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), attn_bias))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def compile_blocks(blocks: nn.ModuleList) -> None:
    """``torch.compile`` each block in place (parameter names stay): the blocks share one compiled graph, which
    fuses the LayerNorms, GELU, biases and residual adds. A new token count or batch size compiles once more
    with those sizes symbolic (torch's automatic dynamic shapes), so a keep-ratio schedule or a short last
    evaluation batch does not compile per size."""
    for block in blocks:
        block.compile()


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor, checkpointing: bool,
               attn_bias: torch.Tensor | None = None) -> torch.Tensor:
    """``blocks`` in order (``attn_bias``: their attention bias). With ``checkpointing`` in training (grad on),
    each block is recomputed in backward: ~1/3 more compute for not storing its activations."""
    recompute = checkpointing and blocks.training and torch.is_grad_enabled()
    for block in blocks:
        x = checkpoint(block, x, attn_bias, use_reentrant=False) if recompute else block(x, attn_bias)
    return x


class VideoViT(nn.Module):
    """Tubelet embedding + space-time positions + blocks -> one feature per clip (B, width).

    ``cfg.arch`` picks the layout (module docstring). ``turbo`` is the token-dropout config; a
    plain float is shorthand for random selection with that training keep ratio and
    ``eval_keep_ratio`` (ignored when a config is given).
    """

    embedding_names = ("patch_embed", "pos_embed", "temporal_pos_embed", "cls_token", "norm_pre")
    "parameters before the first block (layer 0 of layer-wise LR decay)"

    def __init__(self, cfg: ModelConfig, turbo: TurboConfig | float = 1.0, eval_keep_ratio: float = 1.0):
        super().__init__()
        if not isinstance(turbo, TurboConfig):
            turbo = TurboConfig(keep_ratio=float(turbo), eval_keep_ratio=eval_keep_ratio)
        self.arch = cfg.arch
        clip = cfg.arch == "clip"
        self.patch_embed = TubeletEmbed(cfg, bias=not clip)  # CLIP's patch projection has no bias
        self.grid: Grid = (cfg.num_frames // cfg.tubelet_size, cfg.img_size // cfg.patch_size,
                           cfg.img_size // cfg.patch_size)
        t, h, w = self.grid
        num_tokens = t * h * w
        self.register_parameter("cls_token", None)
        if clip:  # CLIP's initialisation (transformers' CLIPVisionEmbeddings); the temporal table starts neutral
            self.cls_token = nn.Parameter(torch.randn(cfg.width) * cfg.width**-0.5)
            self.pos_embed = nn.Parameter(torch.randn(1, 1 + h * w, cfg.width) * 0.02)  # row 0: the class token
            self.temporal_pos_embed = nn.Parameter(torch.zeros(1, t, cfg.width))
        elif cfg.pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, cfg.width))
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        else:  # fixed: positions are informative from the first step
            self.register_buffer("pos_embed", sinusoid_table(num_tokens, cfg.width), persistent=False)
        self.norm_pre = nn.LayerNorm(cfg.width, eps=cfg.norm_eps) if clip else nn.Identity()
        self.turbo = TokenSelector(turbo.strategy, self.grid, self.patch_embed.patch_shape, turbo.keep_ratio,
                                   turbo.eval_keep_ratio, turbo.motion_temperature, turbo.motion_mix)
        rates = [cfg.drop_path * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]  # 0 -> drop_path over depth
        act = QuickGELU if clip else nn.GELU
        self.blocks = nn.ModuleList(Block(cfg.width, cfg.heads, cfg.mlp_ratio, cfg.qkv_bias, cfg.norm_eps, rate, act)
                                    for rate in rates)
        if cfg.compile:
            compile_blocks(self.blocks)
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)  # VideoMAE's fc_norm after pooling; CLIP's ln_post
        self.num_tokens, self.width = num_tokens, cfg.width
        self.activation_checkpointing = cfg.activation_checkpointing

    def position_table(self) -> torch.Tensor:
        """Positions of the N patch tokens in token order, (1, N, D)."""
        if self.cls_token is None:
            return self.pos_embed
        spatial = self.pos_embed[:, None, 1:]  # (1, 1, H'W', D): CLIP's table without the class row
        return (self.temporal_pos_embed[:, :, None] + spatial).flatten(1, 2)  # (1, T', H'W', D) -> (1, N, D)

    def class_key_bias(self, kept: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """(1, 1, 1, 1 + K) attention bias: log(K / H'W') on the class token's key, 0 elsewhere (module doc)."""
        bias = torch.zeros(1, 1, 1, 1 + kept, dtype=dtype, device=device)
        bias[..., 0] = math.log(kept / (self.grid[1] * self.grid[2]))
        return bias

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embed.patchify(video)  # (B, N, P)
        b = patches.shape[0]
        assert patches.shape[1] == self.num_tokens, f"clip gives {patches.shape[1]} tokens, model expects {self.num_tokens}"
        keep = self.turbo(patches)
        # DeepSpeed bf16/fp16 casts parameters only: a fixed table stays fp32 and would promote x to fp32.
        pos = self.position_table().to(patches.dtype).expand(b, -1, -1)  # (B, N, D)
        if keep is not None:  # gather raw patches and their positions before any compute
            patches = patches.gather(1, keep[..., None].expand(-1, -1, patches.shape[-1]))  # (B, K, P)
            pos = pos.gather(1, keep[..., None].expand(-1, -1, self.width))  # (B, K, D)
        x = self.patch_embed.embed(patches) + pos  # (B, K, D)
        if self.cls_token is None:
            x = run_blocks(self.blocks, x, self.activation_checkpointing)
            return self.norm(x.mean(dim=1))  # (B, D)
        cls = (self.cls_token + self.pos_embed[0, 0]).to(x.dtype).expand(b, 1, -1)  # (B, 1, D)
        bias = self.class_key_bias(x.shape[1], x.dtype, x.device)
        x = self.norm_pre(torch.cat([cls, x], dim=1))  # (B, 1 + K, D): the class token is always kept
        x = run_blocks(self.blocks, x, self.activation_checkpointing, bias)
        return self.norm(x[:, 0])  # (B, D)


class VideoClassifier(nn.Module):
    def __init__(self, encoder: VideoViT, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.width, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(video))  # (B, num_classes)


def check_compiler(cfg: ModelConfig) -> None:
    """model.compile builds kernels with the C++ compiler torch's inductor uses ($CXX, else g++): without one the
    first step would fail deep inside torch."""
    compiler = os.environ.get("CXX", "g++")
    if cfg.compile and not shutil.which(compiler):
        raise ConfigError(f"model.compile=true: torch.compile needs a C++ compiler and {compiler} ($CXX, else g++) "
                          "is not on PATH; install one (e.g. apt-get install g++) or set model.compile=false")
