"""Ask the default model a question through vLLM on the cpu_sim platform."""

from __future__ import annotations

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("question", nargs="?", default="What is the capital of France?")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    args = parser.parse_args()

    from vllm_harness.models import prepare

    model = str(prepare("full"))
    from vllm import LLM, SamplingParams
    from vllm.platforms import current_platform

    start = time.perf_counter()
    llm = LLM(model=model, dtype=args.dtype, max_model_len=2048)
    ready = time.perf_counter() - start
    out = llm.chat([{"role": "user", "content": args.question}],
                   SamplingParams(temperature=0, max_tokens=128))
    print(f"\nplatform: {type(current_platform).__name__}, engine ready in {ready:.1f} s")
    print(f"Q: {args.question}\nA: {out[0].outputs[0].text.strip()}")


if __name__ == "__main__":
    main()
