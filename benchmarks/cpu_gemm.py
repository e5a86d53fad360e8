"""The default model's linear layers on the CPU: F.linear against packed oneDNN.

Three tables. First each projection shape alone, repeated on one weight (so the
weight stays in cache): what the kernels can do. Then a whole decode step's
products, the 30 layers' weights and the LM head in turn, which no cache holds:
what memory bandwidth allows. Last, where the host has no native bfloat16 GEMM,
torch's bfloat16 product against the widened one (float32, rounded back) by row
count: where ``vllm_plugin_kit.linear.MIN_ROWS`` comes from.

    python benchmarks/cpu_gemm.py
"""

from __future__ import annotations

import shlex
import sys
import time

import torch
import torch.nn.functional as F

# SmolLM2-135M: hidden 576, intermediate 1536, 9 query and 3 KV heads of 64
SHAPES = {"qkv": (960, 576), "o": (576, 576), "gate_up": (3072, 576), "down": (576, 1536),
          "lm_head": (49152, 576)}
LAYERS = 30


def timed(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def packed(weight: torch.Tensor):
    """The product as vllm-cpu-sim runs it: its packed weight (bfloat16 widened to
    float32 where oneDNN cannot pack bfloat16 on this CPU)."""
    from vllm_plugin_kit.linear import pack_weight, packed_linear

    w = pack_weight(weight)
    return lambda x: packed_linear(x, w, weight.shape[0], None)


def main() -> None:
    from throughput import machine
    from vllm_plugin_kit.linear import host_has_native_bf16_gemm
    from vllm_plugin_kit.linear import packs as supported

    torch.manual_seed(0)
    print(f"\nCommand: `{shlex.join(['python', *sys.argv])}`  ")
    print(f"Machine: {machine()}, {torch.get_num_threads()} threads  ")
    print("oneDNN packs bfloat16 natively." if supported(torch.bfloat16) else
          "oneDNN cannot pack bfloat16 here: the plugin packs those weights as float32.")
    print()
    print("| dtype | rows | shape | F.linear GFLOP/s | packed oneDNN GFLOP/s | ratio |")
    print("|---|---|---|---|---|---|")
    for dtype in (torch.float32, torch.bfloat16):
        for rows in (32, 2048):
            for name, (n, k) in SHAPES.items():
                if name == "lm_head" and rows > 32:
                    continue  # logits are computed for the last token of each sequence
                weight = torch.randn(n, k).to(dtype) * 0.05
                x = torch.randn(rows, k).to(dtype)
                repeats = 100 if rows == 32 else 10
                plain = timed(lambda w=weight, x=x: F.linear(x, w), repeats)
                product = packed(weight)
                fast = timed(lambda f=product, x=x: f(x), repeats)
                flops = 2 * rows * n * k
                print(f"| {str(dtype)[6:]} | {rows} | {name} {n}x{k} | {flops / plain / 1e9:.0f} "
                      f"| {flops / fast / 1e9:.0f} | {plain / fast:.2f}x |")

    print("\n| dtype | decode step's products, 32 rows (ms) | weights read (MB) | GB/s |")
    print("|---|---|---|---|")
    for dtype in (torch.float32, torch.bfloat16):
        layer_shapes = [SHAPES[s] for s in ("qkv", "o", "gate_up", "down")]
        layers = [[packed(torch.randn(n, k).to(dtype) * 0.05) for n, k in layer_shapes]
                  for _ in range(LAYERS)]
        head = packed(torch.randn(*SHAPES["lm_head"]).to(dtype) * 0.05)
        inputs = {k: torch.randn(32, k).to(dtype) for k in (576, 1536)}

        def step(layers=layers, head=head, inputs=inputs, shapes=layer_shapes) -> None:
            for layer in layers:
                for (_, k), f in zip(shapes, layer, strict=True):
                    f(inputs[k])
            head(inputs[576])

        elapsed = timed(step, 10)
        size = torch.tensor([], dtype=dtype if supported(dtype) else torch.float32).element_size()
        nbytes = (LAYERS * sum(n * k for n, k in layer_shapes) + 49152 * 576) * size
        print(f"| {str(dtype)[6:]} | {elapsed * 1e3:.1f} | {nbytes / 1e6:.0f} "
              f"| {nbytes / elapsed / 1e9:.1f} |")


    if host_has_native_bf16_gemm():
        print("\nThis host multiplies bfloat16 natively: nothing is widened.")
        return
    print("\n| rows | shape | torch bfloat16 (us) | widened to float32 (us) | ratio |")
    print("|---|---|---|---|---|")
    for rows in (1, 2, 4, 8, 16, 64):
        for name in ("qkv", "gate_up", "down"):
            n, k = SHAPES[name]
            weight = torch.randn(n, k).bfloat16()
            x = torch.randn(rows, k).bfloat16()
            plain = timed(lambda w=weight, x=x: F.linear(x, w), 50)
            wide = timed(lambda w=weight, x=x: F.linear(x.float(), w.float()).bfloat16(), 50)
            print(f"| {rows} | {name} {n}x{k} | {plain * 1e6:.0f} | {wide * 1e6:.0f} "
                  f"| {plain / wide:.2f}x |")


if __name__ == "__main__":
    main()
