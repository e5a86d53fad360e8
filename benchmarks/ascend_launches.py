"""NPU kernel launches per decoder layer per decode step of vllm-ascend, counted under emulation.

Runs the default model on the emulated NPU platform and counts, for one
decoder layer (a middle one) on every decode step, the kernels an NPU would
run (``vllm_ascend.npu_ops.DeviceLaunches``: each NPU op once, each other
aten op once unless it is a view), and over the whole forward pass the ops
that make the host wait for the device. Prints Markdown with the command and
the machine.

    python benchmarks/ascend_launches.py --batch 1 4
    python benchmarks/ascend_launches.py --model moe    # the small MoE model
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from throughput import machine

os.environ.setdefault("VLLM_PLUGINS", "ascend")
os.environ.setdefault("VLLM_ASCEND_EMULATE", "1")
os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")


def install(worker, layer_index: int) -> int:
    """Count launches of one decoder layer, and host syncs of the whole forward,
    on every step from now on; returns the number of decoder layers."""
    from vllm_ascend import npu_ops

    model = worker.model_runner.get_model()
    layers = model.model.layers
    worker.launch_records = records = []

    def layer_pre(module, args, kwargs):
        module._launch_mode = npu_ops.count_device_launches()
        module._launch_mode.__enter__()

    def layer_post(module, args, kwargs, output):
        mode = module._launch_mode
        mode.__exit__(None, None, None)
        records[-1]["layer"] = dict(mode.kernels + inner)
        inner.clear()

    # Attention and MoE layers run inside vLLM's opaque ops, out of the layer's
    # mode's sight: their kernels are counted by a mode of their own around the
    # attention backend and the MoE runner's implementation.
    inner: Counter[str] = Counter()

    def count_inside(owner, method: str) -> None:
        original = getattr(owner, method)

        def counted(*args, **kwargs):
            with npu_ops.count_device_launches() as seen:
                result = original(*args, **kwargs)
            # its NPU ops are in the global launch count the layer's mode reads too
            inner.update({k: v for k, v in seen.kernels.items() if not k.startswith("npu.")})
            return result

        setattr(owner, method, counted)

    count_inside(layers[layer_index].self_attn.attn.impl, "forward")
    for module in layers[layer_index].modules():
        if hasattr(type(module), "_forward_impl"):  # vLLM's MoE runner
            count_inside(module, "_forward_impl")

    def model_pre(module, args, kwargs):
        positions = kwargs.get("positions", args[1] if len(args) > 1 else None)
        records.append({"tokens": int(positions.numel()) if positions is not None else -1})
        module._sync_mode = npu_ops.count_device_launches()
        module._sync_mode.__enter__()

    def model_post(module, args, kwargs, output):
        mode = module._sync_mode
        mode.__exit__(None, None, None)
        records[-1]["syncs"] = dict(mode.host_syncs)

    # the outer model: vLLM's compiled inner model is called past nn.Module's hooks
    model.register_forward_pre_hook(model_pre, with_kwargs=True, prepend=True)
    model.register_forward_hook(model_post, with_kwargs=True)
    layers[layer_index].register_forward_pre_hook(layer_pre, with_kwargs=True)
    layers[layer_index].register_forward_hook(layer_post, with_kwargs=True)
    return len(layers)


def classes(wrapper) -> str:
    """The worker and model runner the engine runs (the NPU's, emulated or not)."""
    worker = getattr(wrapper, "worker", wrapper)
    return f"{type(worker).__name__} and {type(worker.model_runner).__name__}"


def take(worker) -> list[dict]:
    records, worker.launch_records[:] = list(worker.launch_records), []
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--new-tokens", type=int, default=6)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--model", default="full",
                        help="a harness model (full, moe, ...) or a model directory")
    args = parser.parse_args()
    from vllm import LLM, SamplingParams

    from vllm_harness.models import VARIANTS, prepare

    label = (f"the harness's {args.model} model" if args.model in VARIANTS
             else f"the model in {args.model}")
    if args.model in VARIANTS:
        args.model = str(prepare(args.model, quiet=True))
    # Eager steps: the counting hooks run with the modules, which a replayed
    # ACL graph does not call; a graph replays the kernels its capture ran
    # (tests/test_engine.py counts the NPU ops of replayed steps).
    llm = LLM(model=args.model, dtype=args.dtype, max_model_len=512, seed=0,
              enable_prefix_caching=False, enforce_eager=True,
              additional_config={"ascend": {"device_memory": "1536MiB"}})
    (layers,) = llm.collective_rpc(install, args=(1,))
    (runs_on,) = llm.collective_rpc(classes)
    rows = []
    for batch in args.batch:
        prompts = [f"Count from {i} to twenty:" for i in range(batch)]
        llm.generate(prompts, SamplingParams(temperature=0, max_tokens=args.new_tokens,
                                             ignore_eos=True), use_tqdm=False)
        (records,) = llm.collective_rpc(take)
        decodes = [r for r in records if r["tokens"] == batch and "layer" in r][1:]
        kernels = Counter(decodes[-1]["layer"]) if decodes else Counter()
        same = all(Counter(r["layer"]) == kernels for r in decodes)
        syncs = Counter()
        for record in records:
            syncs.update(record.get("syncs", {}))
        rows.append((batch, len(decodes), sum(kernels.values()), same, kernels, syncs))

    command = "python benchmarks/ascend_launches.py " + " ".join(sys.argv[1:])
    print(f"\nCommand: `{command.strip()}`  \nMachine: {machine()}  \n"
          f"Model: {label} ({layers} decoder layers), {args.dtype}, NPU emulation; "
          f"counted on decoder layer 1; the engine runs {runs_on}\n")
    print("| decode batch | decode steps counted | kernels per layer per step | "
          "same every step | host syncs in the forward passes |")
    print("|---|---|---|---|---|")
    for batch, steps, total, same, _, syncs in rows:
        sync_text = ", ".join(f"{k} x{v}" for k, v in sorted(syncs.items())) or "none"
        print(f"| {batch} | {steps} | {total} | {'yes' if same else 'no'} | {sync_text} |")
    print("\nKernels of one decoder layer on one decode step:\n")
    print("| kernel | launches |")
    print("|---|---|")
    for name, count in sorted(rows[-1][4].items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"| `{name}` | {count} |")


if __name__ == "__main__":
    main()
