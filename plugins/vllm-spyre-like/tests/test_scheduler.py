"""The schedulers on their own: vLLM's V1 scheduler with a KV cache, requests
added, decoded and finished by hand, no model."""

from __future__ import annotations

import pytest
import torch

BLOCK = 16


def make_scheduler(model_dir: str, shapes: list[list[int]] | None, policy: str = "fcfs",
                   max_num_seqs: int = 16, block: int = BLOCK, num_blocks: int = 1000,
                   batch_wait_ms: float = 0):
    """The static batching scheduler with ``shapes``, or with None the continuous one.
    Static batches start without waiting for more requests unless ``batch_wait_ms``."""
    from vllm.config import CacheConfig, ModelConfig, SchedulerConfig, VllmConfig
    from vllm.v1.core.single_type_kv_cache_manager import register_all_kvcache_specs
    from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
    from vllm.v1.structured_output import StructuredOutputManager

    from vllm_spyre_like.scheduler import (
        ContinuousBatchingScheduler,
        StaticBatchingScheduler,
    )

    settings = ({"warmup_shapes": shapes, "batch_wait_ms": batch_wait_ms} if shapes
                else {"mode": "continuous"})
    cls = StaticBatchingScheduler if shapes else ContinuousBatchingScheduler
    model_config = ModelConfig(model=model_dir, dtype="float32", seed=0, max_model_len=256)
    vllm_config = VllmConfig(
        model_config=model_config,
        scheduler_config=SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=1024,
                                         max_model_len=256, is_encoder_decoder=False,
                                         policy=policy),
        cache_config=CacheConfig(block_size=block, enable_prefix_caching=False),
        additional_config={"spyre_like": settings},
    )
    # the platform's hook put the scheduler of the mode in place
    assert vllm_config.scheduler_config.get_scheduler_cls() is cls
    spec = FullAttentionSpec(block_size=block, num_kv_heads=1, head_size=1, dtype=torch.float32)
    kv_cache_config = KVCacheConfig(num_blocks=num_blocks, kv_cache_tensors=[],
                                    kv_cache_groups=[KVCacheGroupSpec(["layer"], spec)])
    vllm_config.cache_config.num_gpu_blocks = num_blocks
    register_all_kvcache_specs(vllm_config)
    return cls(
        vllm_config=vllm_config, kv_cache_config=kv_cache_config, block_size=block,
        structured_output_manager=StructuredOutputManager(vllm_config),
    )


def request(rid: str, prompt: int, max_tokens: int, priority: int = 0):
    from vllm.sampling_params import SamplingParams
    from vllm.v1.request import Request

    params = SamplingParams(max_tokens=max_tokens)
    params.update_from_generation_config({}, 2)
    return Request(rid, list(range(3, 3 + prompt)), params, None, priority=priority)


def scheduled(output) -> list[str]:
    return [r.req_id for r in output.scheduled_new_reqs]


def running(scheduler) -> list[str]:
    return [r.request_id for r in scheduler.running]


def finish(scheduler, ids):
    from vllm.v1.request import RequestStatus

    scheduler.finish_requests(ids, RequestStatus.FINISHED_STOPPED)


@pytest.fixture
def scheduler(tiny_model_dir):
    return make_scheduler(tiny_model_dir, [[64, 20, 2], [128, 10, 3]])


def test_batch_starts_only_when_the_previous_finished(scheduler):
    for i in range(3):
        scheduler.add_request(request(f"a{i}", 10, 20))
    assert scheduled(scheduler.schedule()) == ["a0", "a1"]  # batch size 2 for 20 new tokens
    scheduler.add_request(request("b0", 10, 5))
    # the batch runs: nothing new is admitted, even though b0 would fit
    assert scheduled(scheduler.schedule()) == []
    assert running(scheduler) == ["a0", "a1"]
    finish(scheduler, ["a0"])
    assert scheduled(scheduler.schedule()) == []
    assert running(scheduler) == ["a1"]
    assert [r.request_id for r in scheduler.waiting] == ["a2", "b0"]
    finish(scheduler, ["a1"])
    assert scheduled(scheduler.schedule()) == ["a2", "b0"]


def test_only_requests_fitting_one_shape_together(scheduler):
    # a: only the (64, 20, 2) shape; b: only the (128, 10, 3) shape
    for rid, prompt, new in [("a0", 10, 20), ("b0", 100, 5), ("b1", 90, 10), ("a1", 64, 11),
                             ("b2", 65, 1)]:
        scheduler.add_request(request(rid, prompt, new))
    assert scheduled(scheduler.schedule()) == ["a0", "a1"]
    finish(scheduler, ["a0", "a1"])
    assert scheduled(scheduler.schedule()) == ["b0", "b1", "b2"]


def test_batch_size_caps_the_batch_and_order_is_kept(scheduler):
    for i in range(7):
        scheduler.add_request(request(f"r{i}", 5, 10))  # fits both: the larger batch wins
    assert scheduled(scheduler.schedule()) == ["r0", "r1", "r2"]
    assert scheduler.batch_shape == (128, 10, 3)
    finish(scheduler, ["r0", "r1", "r2"])
    assert scheduled(scheduler.schedule()) == ["r3", "r4", "r5"]
    finish(scheduler, ["r3", "r4", "r5"])
    assert scheduled(scheduler.schedule()) == ["r6"]
    assert scheduler.batch_shape == (64, 20, 2)  # the smaller shape, for one request


def test_priority_order_is_kept(tiny_model_dir):
    scheduler = make_scheduler(tiny_model_dir, [[64, 20, 2]], policy="priority")
    for rid, priority in [("low", 5), ("high", 0), ("mid", 1)]:
        scheduler.add_request(request(rid, 5, 5, priority))
    assert scheduled(scheduler.schedule()) == ["high", "mid"]
    finish(scheduler, ["high", "mid"])
    assert scheduled(scheduler.schedule()) == ["low"]


def test_a_batch_that_could_grow_waits_for_more_requests(tiny_model_dir):
    scheduler = make_scheduler(tiny_model_dir, [[64, 20, 3]], batch_wait_ms=10_000)
    scheduler.add_request(request("a0", 10, 20))
    assert scheduled(scheduler.schedule()) == []  # the shape takes 3: held
    scheduler.add_request(request("a1", 10, 20))
    assert scheduled(scheduler.schedule()) == []
    assert [r.request_id for r in scheduler.waiting] == ["a0", "a1"]
    scheduler.add_request(request("a2", 10, 20))
    assert scheduled(scheduler.schedule()) == ["a0", "a1", "a2"]  # full: starts at once


def test_a_held_batch_starts_when_the_wait_runs_out(tiny_model_dir):
    import time

    scheduler = make_scheduler(tiny_model_dir, [[64, 20, 3]], batch_wait_ms=100)
    scheduler.add_request(request("a0", 10, 20))
    start = time.monotonic()
    outputs = []
    while not (ids := scheduled(scheduler.schedule())):
        outputs.append(ids)
        assert time.monotonic() - start < 5, "the held batch never started"
    assert ids == ["a0"] and outputs  # held at least one step, then run alone
    assert time.monotonic() - start >= 0.1
    finish(scheduler, ["a0"])
    # the wait starts again for the next batch
    scheduler.add_request(request("b0", 10, 20))
    assert scheduled(scheduler.schedule()) == []


def test_a_batch_no_shape_could_grow_is_not_held(tiny_model_dir):
    scheduler = make_scheduler(tiny_model_dir, [[64, 20, 1], [128, 10, 4]], batch_wait_ms=10_000)
    scheduler.add_request(request("long", 10, 20))  # only the batch-of-one shape fits it
    assert scheduled(scheduler.schedule()) == ["long"]


def test_batch_wait_setting():
    from vllm_spyre_like.envs import DEFAULT_BATCH_WAIT_MS, SpyreLikeConfig

    def batch_wait_ms(config, env):
        return SpyreLikeConfig.load(config, env).batch_wait_ms

    assert batch_wait_ms({}, {}) == DEFAULT_BATCH_WAIT_MS
    assert batch_wait_ms({}, {"VLLM_SPYRE_LIKE_BATCH_WAIT_MS": "0"}) == 0
    assert batch_wait_ms({"spyre_like": {"batch_wait_ms": 5}},
                         {"VLLM_SPYRE_LIKE_BATCH_WAIT_MS": "7.5"}) == 5
    for bad in ("-1", "soon", "nan", "1e9"):
        with pytest.raises(ValueError, match=r"VLLM_SPYRE_LIKE_BATCH_WAIT_MS.*milliseconds"):
            batch_wait_ms({}, {"VLLM_SPYRE_LIKE_BATCH_WAIT_MS": bad})


def test_unfittable_request_is_refused(scheduler):
    with pytest.raises(ValueError, match=r"does not fit any warmup shape.*prompt_len=64"):
        scheduler.add_request(request("big", 129, 1))
    with pytest.raises(ValueError, match="warmup shape"):
        scheduler.add_request(request("long", 10, 21))
    assert not scheduler.waiting and "big" not in scheduler.requests


def test_select_batch_skips_what_the_group_cannot_take():
    from vllm_spyre_like.envs import WarmupShape
    from vllm_spyre_like.scheduler import select_batch

    class Req:
        def __init__(self, prompt, new):
            self.num_prompt_tokens, self.max_tokens = prompt, new

    shapes = [WarmupShape(64, 20, 2), WarmupShape(128, 10, 3)]
    reqs = [Req(10, 20), Req(100, 5), Req(20, 20), Req(5, 5)]
    group, shape = select_batch(reqs, shapes)
    assert group == [reqs[0], reqs[2]] and shape == shapes[0]
    assert select_batch([], shapes) == ([], None)


def decoded(scheduler, ids):
    """Each request got its next token, as after a model step."""
    for rid in ids:
        scheduler.requests[rid].append_output_token_ids(7)


def test_continuous_prefills_one_request_at_a_time_then_decodes_all(tiny_model_dir):
    scheduler = make_scheduler(tiny_model_dir, None, max_num_seqs=2, block=64)
    for rid, prompt in [("a", 10), ("b", 70), ("c", 5)]:
        scheduler.add_request(request(rid, prompt, 20))
    step = scheduler.schedule()
    assert scheduled(step) == ["a"] and step.num_scheduled_tokens == {"a": 10}
    decoded(scheduler, ["a"])
    # a prefill step holds the new request alone: "a" does not decode in it
    step = scheduler.schedule()
    assert scheduled(step) == ["b"] and step.num_scheduled_tokens == {"b": 70}
    decoded(scheduler, ["b"])
    # max_num_seqs running: decode steps of every running request, nothing new
    for _ in range(2):
        step = scheduler.schedule()
        assert scheduled(step) == [] and step.num_scheduled_tokens == {"a": 1, "b": 1}
        decoded(scheduler, ["a", "b"])
    assert [r.request_id for r in scheduler.waiting] == ["c"]
    finish(scheduler, ["a"])
    step = scheduler.schedule()
    assert scheduled(step) == ["c"] and step.num_scheduled_tokens == {"c": 5}
    decoded(scheduler, ["c"])
    step = scheduler.schedule()
    assert step.num_scheduled_tokens == {"b": 1, "c": 1}


def test_continuous_decodes_when_no_block_is_free_for_a_prefill(tiny_model_dir):
    # 8 blocks of 64 and the null block: two 250-token prompts fill them
    scheduler = make_scheduler(tiny_model_dir, None, max_num_seqs=3, block=64, num_blocks=9)
    scheduler.add_request(request("a", 250, 5))
    assert scheduled(scheduler.schedule()) == ["a"]
    decoded(scheduler, ["a"])
    scheduler.add_request(request("b", 250, 5))
    assert scheduled(scheduler.schedule()) == ["b"]
    decoded(scheduler, ["b"])
    scheduler.add_request(request("c", 250, 5))
    # a slot is free but no block: the prefill step cannot start, so decodes run
    assert scheduler.schedule().num_scheduled_tokens == {}
    step = scheduler.schedule()
    assert step.num_scheduled_tokens == {"a": 1, "b": 1}
    assert [r.request_id for r in scheduler.waiting] == ["c"]
