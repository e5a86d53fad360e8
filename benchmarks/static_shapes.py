"""Static-shape backend against the reference backend, on the same requests.

Steady-state offline throughput of vllm-spyre-like at one warmup shape
(static batching, and continuous batching with the same batch size) next to
vllm-cpu-sim on identical requests, each platform in its own process, all in
one run so the ratio compares like with like. Also lists the warmup
(compile) time of every graph. Prints Markdown with the command and machine.

    python benchmarks/static_shapes.py --prompt-len 64 --new-tokens 128 --batch 32
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from throughput import machine

STORY = (
    "The lighthouse keeper had kept the lamp burning for forty years. Every night he climbed "
    "the spiral stairs, trimmed the wick, polished the great lens and watched the ships pass "
    "far out on the dark water. The village below had grown, and the fishing boats had become "
    "ferries. "
)


def prompts(tokenizer, n: int, prompt_len: int) -> list[list[int]]:
    """``n`` different prompts that nearly fill the shape: ``prompt_len`` - 7 to
    ``prompt_len`` tokens, as requests at a warmup shape would."""
    topics = ["the ocean", "a mountain village", "the history of tea", "a robot",
              "the night sky", "a library", "winter", "a bicycle journey"]
    out = []
    for i in range(n):
        text = f"Write a long story about {topics[i % len(topics)]} (part {i}). " + STORY * 8
        out.append(tokenizer(text).input_ids[: prompt_len - i % 8])
    return out


def child(args: argparse.Namespace) -> None:
    """One platform: start, warm up with one full batch, then time ``--repeats`` batches."""
    from vllm import LLM, SamplingParams

    start = time.perf_counter()
    # Prefix caching off: every batch is the same requests, which a cache would
    # serve from the first run (and a static shape would pad back up).
    llm = LLM(model=args.model, dtype=args.dtype, max_model_len=args.max_model_len,
              max_num_seqs=args.batch, seed=0, enable_prefix_caching=False)
    startup = time.perf_counter() - start
    from vllm.inputs import TokensPrompt

    params = SamplingParams(temperature=0, max_tokens=args.new_tokens, ignore_eos=True)
    batch = [TokensPrompt(prompt_token_ids=ids)
             for ids in prompts(llm.get_tokenizer(), args.batch, args.prompt_len)]
    llm.generate(batch, params, use_tqdm=False)  # first full batch: steady state after it
    times, texts = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        outs = llm.generate(batch, params, use_tqdm=False)
        times.append(time.perf_counter() - start)
        texts.append([o.outputs[0].token_ids for o in outs])
    tokens = sum(len(t) for t in texts[-1])
    stats = {}
    if hasattr(llm, "collective_rpc"):
        try:
            stats = llm.collective_rpc("compile_stats")[0]
        except Exception:  # the reference platform's worker has no such method
            stats = {}
    llm.llm_engine.engine_core.shutdown()
    print("RESULT " + json.dumps({
        "startup": startup, "best": min(times), "times": times, "tokens": tokens,
        "outputs": [list(t) for t in texts[-1]], "stats": stats,
    }))


def run(platform: str, env: dict[str, str], args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", "--model", args.model, "--dtype", args.dtype,
           "--prompt-len", str(args.prompt_len), "--new-tokens", str(args.new_tokens),
           "--batch", str(args.batch), "--repeats", str(args.repeats),
           "--max-model-len", str(args.max_model_len)]
    full_env = {**os.environ, "VLLM_PLUGINS": platform, **env}
    proc = subprocess.run(cmd, env=full_env, capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    sys.stderr.write(proc.stderr[-4000:])
    raise SystemExit(f"{platform} {env} failed (exit {proc.returncode})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-model-len", type=int, default=256)
    parser.add_argument("--backend", default="inductor", help="spyre_like compile backend")
    parser.add_argument("--model", help="model directory (default: the prepared default model)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.model is None:
        from vllm_harness.models import prepare

        args.model = str(prepare("full"))
    if args.child:
        child(args)
        return

    shape = {
        "VLLM_SPYRE_LIKE_WARMUP_PROMPT_LENS": str(args.prompt_len),
        "VLLM_SPYRE_LIKE_WARMUP_NEW_TOKENS": str(args.new_tokens),
        "VLLM_SPYRE_LIKE_WARMUP_BATCH_SIZES": str(args.batch),
        "VLLM_SPYRE_LIKE_COMPILE_BACKEND": args.backend,
    }
    common = {"VLLM_ALLOW_INSECURE_SERIALIZATION": "1"}
    runs = {
        "cpu_sim": run("cpu_sim", common, args),
        "spyre_like static": run("spyre_like", {**common, **shape}, args),
        "spyre_like continuous": run(
            "spyre_like", {**common, **shape, "VLLM_SPYRE_LIKE_MODE": "continuous"}, args),
    }
    reference = runs["cpu_sim"]
    print(f"\nCommand: `{shlex.join(['python', *sys.argv])}`  ")
    print(f"Machine: {machine()}  ")
    print(f"Workload: {args.batch} prompts of {args.prompt_len - 7} to {args.prompt_len} "
          f"tokens x "
          f"{args.new_tokens} output tokens, {args.dtype}, greedy, EOS ignored; warmup "
          f"shape ({args.prompt_len}, {args.new_tokens}, {args.batch}); best of "
          f"{args.repeats} batches after one full warm-up batch, prefix caching off; "
          f"compile backend "
          f"{args.backend}\n")
    print("| platform | output tok/s | batch time (s), each run | vs cpu_sim | "
          "same tokens as cpu_sim | engine start (s) |")
    print("|---|---|---|---|---|---|")
    for name, r in runs.items():
        same = sum(a == b for a, b in zip(r["outputs"], reference["outputs"]))
        print(f"| {name} | {r['tokens'] / r['best']:.0f} | "
              f"{', '.join(f'{t:.2f}' for t in r['times'])} | "
              f"{reference['best'] / r['best']:.2f}x | {same}/{len(r['outputs'])} | "
              f"{r['startup']:.1f} |")
    print("\n| platform | graph (tokens) | kind | warmup: compile + first run (s) |")
    print("|---|---|---|---|")
    for name, r in runs.items():
        stats = r["stats"]
        for size, seconds in sorted(stats.get("warmup_seconds", {}).items(),
                                    key=lambda kv: int(kv[0])):
            size = int(size)
            kind = "/".join(k for k in ("prefill", "decode")
                            if size in stats.get(f"{k}_sizes", []))
            print(f"| {name} | {size} | {kind} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
