"""Write a W8A8 checkpoint in ModelSlim's format from a Hugging Face model.

    python -m vllm_ascend.modelslim SRC DST [--scheme W8A8|W8A8_DYNAMIC]

Every linear layer of the decoder (not the LM head) gets int8 weights,
symmetric per output channel; ``W8A8`` also calibrates each layer's input
range on a few prompts for its static, asymmetric per-tensor activation
scale and offset. Everything else is copied as it was, in bfloat16, as
msModelSlim exports bfloat16 models. The result loads with
``vllm serve DST --quantization ascend``; what each tensor means is in
:mod:`vllm_ascend.quantization`. It is for testing the quantized path on
real weights: round-to-nearest with min/max calibration, none of
msModelSlim's accuracy methods.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from vllm_ascend.quantization import DESCRIPTION_FILE, DYNAMIC, FLOAT, STATIC

WEIGHTS_FILE = "quant_model_weights.safetensors"
#: what the static activation ranges are calibrated on
CALIBRATION = [
    "The capital of France is",
    "Write a short poem about the sea.",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "Photosynthesis turns light, water and carbon dioxide into",
    "Q: How many legs does a spider have?\nA:",
    "Once upon a time, in a village at the edge of a forest, there lived",
    "The three primary colours are red, yellow and",
    "Translate to French: Good morning, how are you?",
]
INT8_MIN, INT8_MAX = -128, 127


def quantize_weight(weight: torch.Tensor, dtype: torch.dtype
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 [n, k], scale [n, 1] in ``dtype``): symmetric per output channel,
    rounded with the stored (rounded) scale so they dequantize consistently."""
    scale = (weight.float().abs().amax(dim=1, keepdim=True) / INT8_MAX).clamp(min=1e-12)
    scale = scale.to(dtype)
    q = torch.round(weight.float() / scale.float()).clamp(INT8_MIN, INT8_MAX)
    return q.to(torch.int8), scale


def activation_params(low: float, high: float, dtype: torch.dtype
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_scale, input_offset) [1] in ``dtype``: [low, high] onto [-128, 127]."""
    low, high = min(low, 0.0), max(high, 0.0)
    scale = torch.tensor([max(high - low, 1e-8) / (INT8_MAX - INT8_MIN)]).to(dtype)
    offset = torch.round(INT8_MIN - low / scale.float()).clamp(INT8_MIN, INT8_MAX).to(dtype)
    return scale, offset


def calibrate(model: torch.nn.Module, tokenizer, layers: dict[str, torch.nn.Linear],
              prompts: list[str]) -> dict[str, tuple[float, float]]:
    """Each layer's input range (min, max) over the prompts."""
    ranges: dict[str, tuple[float, float]] = {}

    def hook(name: str):
        def record(_module, args) -> None:
            x = args[0].detach()
            low, high = float(x.min()), float(x.max())
            old = ranges.get(name, (low, high))
            ranges[name] = (min(old[0], low), max(old[1], high))
        return record

    handles = [layer.register_forward_pre_hook(hook(name)) for name, layer in layers.items()]
    try:
        with torch.no_grad():
            for prompt in prompts:
                model(**tokenizer(prompt, return_tensors="pt"))
    finally:
        for handle in handles:
            handle.remove()
    return ranges


def quantized_layers(model: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    """The decoder's linear layers: all but the output head."""
    head = model.get_output_embeddings()
    return {name: module for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and module is not head}


def convert(src: str | Path, dst: str | Path, scheme: str = STATIC,
            prompts: list[str] | None = None, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Write the ModelSlim checkpoint of the model at ``src`` into ``dst``."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if scheme not in (STATIC, DYNAMIC):
        raise ValueError(f"scheme {scheme!r}: choose {STATIC} or {DYNAMIC}")
    src, dst = Path(src), Path(dst)
    model = AutoModelForCausalLM.from_pretrained(src, torch_dtype=torch.float32)
    model.eval()
    layers = quantized_layers(model)
    ranges = {}
    if scheme == STATIC:
        tokenizer = AutoTokenizer.from_pretrained(src)
        ranges = calibrate(model, tokenizer, layers, prompts or CALIBRATION)
        missing = sorted(set(layers) - set(ranges))
        if missing:
            raise RuntimeError(f"calibration never reached {missing[:3]}")

    tensors: dict[str, torch.Tensor] = {}
    description: dict[str, str] = {"model_quant_type": scheme, "version": "1.0.0"}
    head = model.get_output_embeddings()
    head_weight = next(f"{name}.weight" for name, module in model.named_modules()
                       if module is head)
    for key, value in model.state_dict().items():
        layer, _, leaf = key.rpartition(".")
        if key == head_weight and model.config.tie_word_embeddings:
            continue  # the head is the embedding; vLLM ties them again
        if layer not in layers or leaf != "weight":
            tensors[key] = value.to(dtype)
            description[key] = FLOAT
            continue
        q, w_scale = quantize_weight(value, dtype)
        parts = {"weight": q}
        if scheme == DYNAMIC:
            parts |= {"weight_scale": w_scale, "weight_offset": torch.zeros_like(w_scale)}
        else:
            x_scale, x_offset = activation_params(*ranges[layer], dtype)
            # x ≈ (x_q − offset)·x_scale, so x·Wᵀ ≈ x_scale·w_scale·(x_q·W_qᵀ − offset·ΣW_q)
            parts |= {
                "input_scale": x_scale,
                "input_offset": x_offset,
                "quant_bias": (-x_offset.float() * q.sum(dim=1, dtype=torch.int64)
                               ).to(torch.int32),
                "deq_scale": (x_scale.float() * w_scale.float().flatten()),
            }
        for leaf_name, tensor in parts.items():
            tensors[f"{layer}.{leaf_name}"] = tensor.contiguous()
            description[f"{layer}.{leaf_name}"] = scheme

    dst.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        if item.is_file() and not item.name.startswith(".") and \
                not item.name.endswith((".safetensors", ".bin", ".index.json",
                                                      ".pt", ".gguf")):
            shutil.copy2(item, dst / item.name)
    config = json.loads((src / "config.json").read_text())
    config["torch_dtype"] = str(dtype).removeprefix("torch.")
    config.pop("quantization_config", None)
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    save_file(tensors, str(dst / WEIGHTS_FILE), metadata={"format": "pt"})
    (dst / DESCRIPTION_FILE).write_text(json.dumps(description, indent=2))
    return dst


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vllm_ascend.modelslim",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("src", help="a Hugging Face model directory")
    parser.add_argument("dst", help="where to write the W8A8 checkpoint")
    parser.add_argument("--scheme", choices=(STATIC, DYNAMIC), default=STATIC)
    args = parser.parse_args(argv)
    out = convert(args.src, args.dst, args.scheme)
    print(f"{args.scheme} checkpoint written to {out}; serve it with "
          f"`vllm serve {out} --quantization ascend`")


if __name__ == "__main__":
    main()
