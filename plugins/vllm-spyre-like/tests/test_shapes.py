"""Warmup shapes: parsing, validation and the errors that name the setting."""

from __future__ import annotations

import pytest


def env(prompt="64", new="20", batch="4"):
    return {"VLLM_SPYRE_LIKE_WARMUP_PROMPT_LENS": prompt,
            "VLLM_SPYRE_LIKE_WARMUP_NEW_TOKENS": new,
            "VLLM_SPYRE_LIKE_WARMUP_BATCH_SIZES": batch}


def warmup_shapes(additional_config, environ):
    from vllm_spyre_like.envs import SpyreLikeConfig

    return list(SpyreLikeConfig.load(additional_config, environ).warmup_shapes)


def test_env_lists_are_zipped():
    from vllm_spyre_like.envs import WarmupShape

    shapes = warmup_shapes(None, env("128, 64", "20,40", "2,4"))
    assert shapes == [WarmupShape(64, 40, 4), WarmupShape(128, 20, 2)]


def test_default_shape_when_nothing_is_set():
    from vllm_spyre_like.envs import WarmupShape

    assert warmup_shapes(None, {}) == [WarmupShape(64, 20, 4)]


def test_additional_config_wins_over_env():
    from vllm_spyre_like.envs import WarmupShape

    config = {"spyre_like": {"warmup_shapes": [[32, 8, 2], {"prompt_len": 16,
                                                            "new_tokens": 4, "batch_size": 1}]}}
    assert warmup_shapes(config, env()) == [WarmupShape(16, 4, 1), WarmupShape(32, 8, 2)]


def test_duplicates_are_dropped():
    assert len(warmup_shapes(None, env("64,64", "20,20", "4,4"))) == 1


@pytest.mark.parametrize(("environ", "match"), [
    (env(new="20,30"), r"same length .*NEW_TOKENS has 2"),
    (env(prompt="64,abc"), r"VLLM_SPYRE_LIKE_WARMUP_PROMPT_LENS='abc' must be a positive"),
    (env(batch="0"), r"VLLM_SPYRE_LIKE_WARMUP_BATCH_SIZES='0' must be a positive"),
    (env(batch=","), r"VLLM_SPYRE_LIKE_WARMUP_BATCH_SIZES is empty"),
    (env(batch=""), r"VLLM_SPYRE_LIKE_WARMUP_BATCH_SIZES is not set"),
    ({"VLLM_SPYRE_LIKE_WARMUP_PROMPT_LENS": "64"},
     r"VLLM_SPYRE_LIKE_WARMUP_NEW_TOKENS, VLLM_SPYRE_LIKE_WARMUP_BATCH_SIZES are not set"),
])
def test_bad_env_is_named(environ, match):
    with pytest.raises(ValueError, match=match):
        warmup_shapes(None, environ)


@pytest.mark.parametrize(("config", "match"), [
    ({"warmup_shapes": [[64, 20]]}, r"warmup_shapes\[0\] = \[64, 20\] is not a"),
    ({"warmup_shapes": [[64, -1, 4]]}, r"warmup_shapes\[0\]=-1 must be a positive"),
    ({"warmup_shapes": []}, r"must be a non-empty list"),
    ({"warmup_shape": [[64, 20, 4]]}, r"unknown additional_config.spyre_like keys"),
])
def test_bad_additional_config_is_named(config, match):
    with pytest.raises(ValueError, match=match):
        warmup_shapes({"spyre_like": config}, {})


def test_shapes_must_fit_max_model_len():
    from vllm_spyre_like.envs import WarmupShape, check_shapes

    check_shapes([WarmupShape(64, 20, 4)], 84)
    with pytest.raises(ValueError, match=r"prompt_len=64, new_tokens=20.*max_model_len=80"):
        check_shapes([WarmupShape(64, 20, 4)], 80)


def test_fit_and_refusal_message():
    from vllm_spyre_like.envs import WarmupShape, fitting, unfittable_message

    shapes = [WarmupShape(64, 20, 4), WarmupShape(128, 10, 2)]
    assert fitting(shapes, 64, 20) == [shapes[0]]
    assert fitting(shapes, 100, 10) == [shapes[1]]
    assert fitting(shapes, 100, 11) == []
    message = unfittable_message(shapes, 100, 11)
    assert "warmup shape" in message
    assert "(prompt_len=64, new_tokens=20, batch_size=4)" in message
    assert "(prompt_len=128, new_tokens=10, batch_size=2)" in message
