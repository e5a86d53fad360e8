"""Compiled sizes, padding to them, and the compiler that counts graphs (no engine)."""

from __future__ import annotations

import pytest
import torch

from vllm_spyre_like.envs import SpyreLikeConfig, WarmupShape
from vllm_spyre_like.graphs import (
    CountingCompiler,
    GraphSizes,
    compile_model,
    continuous_sizes,
    decode_batch_sizes,
    static_sizes,
    within_budget,
)


def test_static_sizes_are_batch_times_prompt_and_batch():
    sizes = static_sizes([WarmupShape(64, 20, 4), WarmupShape(128, 8, 2),
                          WarmupShape(64, 400, 1)])
    assert sizes == GraphSizes(prefill=(64, 256), decode=(1, 2, 4))
    assert sizes.all() == [1, 2, 4, 64, 256]


def test_continuous_sizes_are_block_multiples_and_powers_of_two():
    sizes = continuous_sizes(max_model_len=256, max_num_seqs=6, block_size=64)
    assert sizes == GraphSizes(prefill=(64, 128, 192, 256), decode=(1, 2, 4, 6))
    assert decode_batch_sizes(1) == (1,)
    assert decode_batch_sizes(8) == (1, 2, 4, 8)


@pytest.mark.parametrize(("tokens", "decode", "want"), [
    (1, True, 1), (3, True, 4), (4, True, 4), (5, True, None),
    (1, False, 64), (64, False, 64), (65, False, 128), (129, False, None),
])
def test_a_step_is_padded_to_the_smallest_compiled_size(tokens, decode, want):
    sizes = GraphSizes(prefill=(64, 128), decode=(1, 2, 4))
    assert sizes.padded(tokens, decode) == want


def test_prefill_sizes_above_the_token_budget_give_way_to_it():
    sizes = within_budget(GraphSizes(prefill=(64, 256, 512), decode=(1, 8)), 128)
    assert sizes == GraphSizes(prefill=(64, 128), decode=(1, 8))
    assert within_budget(sizes, 4096) == sizes


class Mlp(torch.nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.up = torch.nn.Linear(width, 4 * width)
        self.down = torch.nn.Linear(4 * width, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.nn.functional.silu(self.up(x)))


def test_one_graph_per_shape_and_none_when_a_shape_repeats():
    model = Mlp()
    compiler = CountingCompiler("eager")
    compile_model(model, compiler, num_graphs=3)
    for n in (1, 4, 16):
        model(torch.randn(n, 8))
    assert compiler.compilations == 3
    for n in (16, 1, 4, 4):
        model(torch.randn(n, 8))
    assert compiler.compilations == 3, "a shape seen before was compiled again"
    model(torch.randn(5, 8))
    assert compiler.compilations == 4, "a new shape must be a new graph (static shapes)"


def test_inductor_graph_computes_what_eager_does():
    torch.manual_seed(0)
    model = Mlp(16)
    x = torch.randn(8, 16)
    with torch.no_grad():
        want = model(x)
        compiler = CountingCompiler("inductor")
        compile_model(model, compiler, num_graphs=1)
        got = model(x)
    assert compiler.compilations == 1
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def batching_mode(config, env):
    return SpyreLikeConfig.load(config, env).mode


def compile_backend(config, env):
    return SpyreLikeConfig.load(config, env).compile_backend


def test_mode_and_backend_settings():
    assert batching_mode({}, {}) == "static"
    assert batching_mode({}, {"VLLM_SPYRE_LIKE_MODE": "Continuous"}) == "continuous"
    assert batching_mode({"spyre_like": {"mode": "static"}},
                         {"VLLM_SPYRE_LIKE_MODE": "continuous"}) == "static"
    assert compile_backend({}, {}) == "inductor"
    assert compile_backend({}, {"VLLM_SPYRE_LIKE_COMPILE_BACKEND": "eager"}) == "eager"
    with pytest.raises(ValueError, match=r"VLLM_SPYRE_LIKE_MODE='dynamic'; choose one of "
                       r"static, continuous"):
        batching_mode({}, {"VLLM_SPYRE_LIKE_MODE": "dynamic"})
    with pytest.raises(ValueError, match=r"additional_config.spyre_like.compile_backend="
                       r"'tvm'; choose one of inductor, aot_eager, eager"):
        compile_backend({"spyre_like": {"compile_backend": "tvm"}}, {})
    with pytest.raises(ValueError, match="unknown compile backend"):
        CountingCompiler("tvm")
