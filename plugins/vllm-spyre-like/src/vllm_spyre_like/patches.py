"""Where spyre_like changes vLLM or torch at run time, and every private vLLM name it leans on.

Applied whenever vLLM activates the platform in a process (the user's process
and every worker; see ``register``). Keep every such change here, with the
reason, so it is easy to drop when upstream grows a hook.

Patched, because no hook exists:

- ``torch.accelerator.empty_cache`` / ``empty_host_cache``: no-ops without an
  accelerator, which vLLM's cleanup calls on every non-CPU platform
  (:func:`vllm_plugin_kit.patches.no_accelerator_cache_calls`). Your device:
  drop it once torch.accelerator knows it.

Private vLLM names the plugin overrides, calls or sets (checked against the
installed vLLM by ``tests/test_vllm_contract.py``), beside the kit's own
(:data:`vllm_plugin_kit.contract.KIT`): :data:`COUPLINGS`.
"""

from __future__ import annotations

from vllm_plugin_kit.contract import CALLS, OVERRIDES, READS, Coupling
from vllm_plugin_kit.patches import no_accelerator_cache_calls

_RUNNER = "vllm.v1.worker.gpu_model_runner.GPUModelRunner"
_SCHEDULER = "vllm.v1.core.sched.scheduler.Scheduler"

COUPLINGS = (
    Coupling(f"{_RUNNER}._determine_batch_execution_and_padding", OVERRIDES,
             "pads each step's token count to a compiled graph size, as vLLM pads CUDA "
             "graph steps", ("num_tokens", "num_reqs", "num_scheduled_tokens_np",
                             "max_num_scheduled_tokens", "use_cascade_attn",
                             "allow_microbatching", "force_eager", "force_uniform_decode",
                             "force_has_lora", "force_num_active_loras", "num_encoder_reqs")),
    Coupling(f"{_RUNNER}._dummy_run", CALLS,
             "runs each compiled size once at warmup (compiling its graph)",
             ("num_tokens", "cudagraph_runtime_mode", "force_attention", "uniform_decode",
              "allow_microbatching", "skip_eplb", "is_profile", "create_mixed_batch",
              "remove_lora", "is_graph_capturing", "num_active_loras", "profile_seq_lens",
              "randomize_inputs")),
    Coupling("vllm.v1.worker.cpu_model_runner.CPUModelRunner.load_model", OVERRIDES,
             "compiles the model per shape once it is loaded", ("load_dummy_weights",)),
    Coupling(f"{_SCHEDULER}.schedule", OVERRIDES,
             "shows vLLM's scheduler only the requests of the current batch",
             ("throttle_prefills",)),
    Coupling(f"{_SCHEDULER}.add_request", OVERRIDES,
             "refuses a request that fits no warmup shape", ("request",)),
    Coupling(f"{_SCHEDULER}.__init__", READS,
             "the scheduler's waiting queue (pop_request, add_request), running list, "
             "requests map and max_num_running_reqs are read and reordered", None),
    Coupling("vllm.v1.worker.cpu_worker.CPUWorker.compile_or_warm_up_model", OVERRIDES,
             "compiles every shape's graph before the engine serves", ()),
)


def apply() -> None:
    no_accelerator_cache_calls()
