"""vllm-ascend's decode steps eager and as ACL graphs, under NPU emulation.

For each mode, a fresh engine on the default model (its own process; with
tensor parallelism, the harness's tp2 variant of it): the
time to a ready engine (graph capture included), then for each batch size the
output tokens a second of a greedy generation (EOS ignored; prefill included)
and the token ids, which must be the same in both modes. On the host an
emulated graph replays the recorded kernels without the modules' Python, so
this measures what the graph saves on the host, not on an NPU. Prints
Markdown with the command and the machine.

    python benchmarks/ascend_graphs.py --batch 1 4 8 --tp 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from throughput import machine

os.environ.setdefault("VLLM_PLUGINS", "ascend")
os.environ.setdefault("VLLM_ASCEND_EMULATE", "1")


def one(mode: str, tp: int, batches: list[int], new_tokens: int, dtype: str) -> dict:
    from vllm import LLM, SamplingParams

    from vllm_harness.models import prepare

    start = time.perf_counter()
    # the default model's 9 heads do not split in two: the harness's tp2 variant does
    model = prepare("full" if tp == 1 else "tp2", quiet=True)
    llm = LLM(model=str(model), dtype=dtype, max_model_len=512, seed=0,
              tensor_parallel_size=tp, enforce_eager=mode == "eager",
              enable_prefix_caching=False,
              additional_config={"ascend": {"device_memory": "1536MiB"}})
    ready = time.perf_counter() - start
    params = SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True)
    llm.generate(["Warm up"], params, use_tqdm=False)
    rows = {}
    for batch in batches:
        prompts = [f"Count from {i} to twenty:" for i in range(batch)]
        start = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        elapsed = time.perf_counter() - start
        rows[batch] = {"tok_s": batch * new_tokens / elapsed,
                       "ids": [list(o.outputs[0].token_ids) for o in outs]}
    return {"ready": ready, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--tp", type=int, nargs="+", default=[1])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        mode, tp = args.one.split(":")
        print("RESULT " + json.dumps(one(mode, int(tp), args.batch, args.new_tokens,
                                         args.dtype)))
        return
    results = {}
    for tp in args.tp:
        for mode in ("eager", "graphs"):
            command = [sys.executable, __file__, "--one", f"{mode}:{tp}", "--batch",
                       *map(str, args.batch), "--new-tokens", str(args.new_tokens),
                       "--dtype", args.dtype]
            run = subprocess.run(command, capture_output=True, text=True)
            if run.returncode:
                sys.exit(f"{' '.join(command)} failed:\n{run.stderr[-3000:]}")
            out = run.stdout
            line = next(x for x in out.splitlines() if x.startswith("RESULT "))
            results[mode, tp] = json.loads(line[len("RESULT "):])

    shown = "python benchmarks/ascend_graphs.py " + " ".join(sys.argv[1:])
    print(f"\nCommand: `{shown.strip()}`  \nMachine: {machine()}  \n"
          f"Model: the default model (tensor parallel 2: its tp2 variant), {args.dtype}, "
          f"NPU emulation, {args.new_tokens} output tokens a request\n")
    print("| tensor parallel | mode | engine ready (s) | "
          + " | ".join(f"batch {b} (tok/s)" for b in args.batch) + " | same ids as eager |")
    print("|---|---|---|" + "---|" * len(args.batch) + "---|")
    for tp in args.tp:
        eager = results["eager", tp]
        for mode in ("eager", "graphs"):
            r = results[mode, tp]
            same = all(r["rows"][str(b)]["ids"] == eager["rows"][str(b)]["ids"]
                       for b in args.batch)
            speeds = " | ".join(f"{r['rows'][str(b)]['tok_s']:.1f}" for b in args.batch)
            print(f"| {tp} | {mode} | {r['ready']:.1f} | {speeds} | "
                  f"{'—' if mode == 'eager' else ('yes' if same else 'NO')} |")


if __name__ == "__main__":
    main()
