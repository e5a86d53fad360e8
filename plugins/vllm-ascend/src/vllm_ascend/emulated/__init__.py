"""What stands in for the NPU on a host without one.

The worker, model runner, attention and layers are the ones an NPU runs;
under emulation only two things change: the device runtime
(:mod:`vllm_ascend.emulated.runtime`: an emulated ``torch.npu`` and
``torch.accelerator``, its graphs :mod:`vllm_ascend.emulated.graphs`) and the
kernels (the references of torch_npu's ops, one module per op family here,
indexed by :mod:`vllm_ascend.emulation`), with the host's linear layers
widened where the CPU has no fast bfloat16 GEMM
(:func:`vllm_plugin_kit.linear.widen_bf16_products`).
"""
