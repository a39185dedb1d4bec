"""Speed benchmarks: one steerable layer (``bench_conv``), the whole classifier and the shipped recipes
against a git ref (``bench_model``), whole CLI invocations (``bench_cli``), the CUDA path against the CPU
one (``cuda_check``); ``run_idle.sh`` reruns the committed ones from a clean clone."""
