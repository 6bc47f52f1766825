"""model.compile: the compiled encoder blocks give the eager outputs and gradients, and a new token count
compiles once more (symbolic), not once per count."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from turbo_ds.config import ModelConfig
from turbo_ds.models.vit import VideoClassifier, VideoViT



def no_cxx() -> bool:
    """True when inductor finds no C++ compiler (it compiles CPU kernels with one): the only reason to skip."""
    from torch._inductor.cpp_builder import get_cpp_compiler
    from torch._inductor.exc import InvalidCxxCompiler
    try:
        get_cpp_compiler()
    except InvalidCxxCompiler:
        return True
    return False


pytestmark = [pytest.mark.parity,
              pytest.mark.skipif(no_cxx(), reason="torch.compile needs a C++ compiler (g++, or $CXX) on the CPU")]


def step(model: VideoClassifier, video: torch.Tensor, keep: float) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Outputs and parameter gradients of one forward + backward keeping ``keep`` of the tokens."""
    model.zero_grad(set_to_none=True)
    model.encoder.turbo.set_keep_ratio(keep)
    torch.manual_seed(1)  # the same kept tokens in both models
    out = model(video)
    out.square().sum().backward()
    return out.detach(), [p.grad for p in model.parameters()]


def test_compiled_blocks_match_eager_outputs_and_gradients():
    cfg = ModelConfig(num_frames=4, img_size=16, patch_size=8, tubelet_size=2, width=32, depth=2, heads=2)
    torch.manual_seed(0)
    eager = VideoClassifier(VideoViT(cfg, 0.5), 3)
    compiled = VideoClassifier(VideoViT(dataclasses.replace(cfg, compile=True), 0.5), 3)
    assert compiled.state_dict().keys() == eager.state_dict().keys()  # compiled in place: checkpoints unchanged
    compiled.load_state_dict(eager.state_dict())
    video = torch.randn(2, 3, 4, 16, 16)  # 2 x 2 x 2 = 8 tokens per clip
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    for keep, graphs in ((0.5, 1), (0.25, 2), (1.0, 2)):  # 4, 2, 8 tokens: the second count makes it symbolic
        (out, grads), (ref, ref_grads) = step(compiled, video, keep), step(eager, video, keep)
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4)
        assert counters["stats"]["unique_graphs"] == graphs, dict(counters["stats"])
    compiled.eval(), eager.eval()
    with torch.no_grad():  # evaluation: every token, no autograd
        torch.testing.assert_close(compiled(video), eager(video), rtol=1e-4, atol=1e-4)
