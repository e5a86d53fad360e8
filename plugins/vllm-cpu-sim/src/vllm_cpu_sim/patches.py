"""Where cpu_sim changes vLLM or torch at run time, and every private vLLM name it leans on.

Applied whenever vLLM activates the platform in a process (the user's process
and every worker; see ``register``). Applying twice is harmless.

Patched, because no hook exists:

- ``torch.accelerator.empty_cache`` / ``empty_host_cache``: no-ops without an
  accelerator, which vLLM's cleanup calls on every non-CPU platform
  (:func:`vllm_plugin_kit.patches.no_accelerator_cache_calls`).

Private vLLM names the plugin overrides, calls or sets (checked against the
installed vLLM by ``tests/test_vllm_contract.py``), beside the kit's own
(:data:`vllm_plugin_kit.contract.KIT`: the host worker, the slot-mapping kernel,
the host linear layers): :data:`COUPLINGS`.
"""

from __future__ import annotations

from vllm_plugin_kit.contract import CALLS, OVERRIDES, READS, Coupling
from vllm_plugin_kit.patches import no_accelerator_cache_calls

COUPLINGS = (
    Coupling("vllm.compilation.passes.pass_manager.PostGradPassManager.configure", OVERRIDES,
             "the compiled model's pass manager drops vLLM's _C de-functionalization pass",
             ("config",)),
    Coupling("vllm.compilation.passes.pass_manager.PostGradPassManager.__init__", READS,
             "configure() replaces its fix_functionalization attribute", ()),
    Coupling("vllm.compilation.passes.vllm_inductor_pass.VllmInductorPass.__init__", CALLS,
             "the pass that stands in for FixFunctionalizationPass", ("config",)),
    Coupling("vllm.model_executor.layers.layernorm.RMSNorm.forward_native", CALLS,
             "the RMSNorm of a variance-size override keeps vLLM's reference",
             ("x", "residual")),
    Coupling("vllm.v1.worker.cpu_model_runner.CPUModelRunner.load_model", OVERRIDES,
             "linear layers are packed for oneDNN once the model is loaded",
             ("load_dummy_weights",)),
    Coupling("vllm.config.compilation.CompilationConfig.post_init_cudagraph_sizes", CALLS,
             "vLLM completes the compile sizes the piecewise backend looks up only on "
             "platforms with static graphs", ()),
)


def apply() -> None:
    no_accelerator_cache_calls()
