"""The environment every harness process gets, in one module that imports
nothing of the harness: the pytest plugin, the fixtures it registers and the
runners all read it, and none of them should import another for it."""

from __future__ import annotations

#: Settings every harness process gets: no hub, loopback only.
COMMON_ENV = {
    "HF_HUB_OFFLINE": "1",
    "VLLM_HOST_IP": "127.0.0.1",
    "GLOO_SOCKET_IFNAME": "lo",
    "VLLM_NO_USAGE_STATS": "1",
}
#: Defaults a user's environment overrides: one OpenMP thread per process. The
#: suites' two workers, and vLLM's tests beside them, share the cores; two
#: OpenMP threads in each of two busy processes spin at each other's barriers
#: (a transformers reference ran 8x slower). Engines take their threads from
#: the plugin's own settings.
DEFAULT_ENV = {"OMP_NUM_THREADS": "1"}
#: The suites' offline engines (``LLM``) run their engine core in the test's
#: process: a core process of its own imports vLLM again (about 15 s of a core
#: per engine, four engines and more per profile). The platform's worker, model
#: runner and scheduler are the same either way; the process boundary is still
#: crossed by the server (``vllm serve`` always runs its core apart, and gets
#: the user's environment without this), by tensor parallelism's workers and by
#: the registration probes. A default: ``VLLM_ENABLE_V1_MULTIPROCESSING=1``
#: in the caller's environment runs them apart.
IN_PROCESS_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
