"""pcsym's benchmarks: ``speed/`` (how fast: layers, the classifier, the CLI, CUDA against CPU) and
``accuracy/`` (how well: ablations, rotation protocols, peers, fine-tuning, groups, near-duplicates).

Run every script from the repository root as a module, with the project's environment (pcsym is
installed in it, editable): ``python -m benchmarks.speed.bench_cli``. ``common`` holds their shared
helpers (argument parsing, timing, fresh-process workers, result files in ``benchmarks/results/``);
``README.md`` indexes every script and the result files it writes.
"""
