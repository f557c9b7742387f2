"""The fast and the slow test sets: ``pytest -m "not slow"`` skips the end-to-end files listed here."""

import pytest

SLOW_FILES = {
    "test_readme.py",  # every README and docs snippet, each in a fresh process
    "test_docs.py",
    "test_examples.py",
    "test_seed_tutorials.py",
    "test_methods_examples.py",
    "test_compat_suite.py",  # pyvene 0.1.8's own suite
    "test_pyreft.py",
    "test_distributed.py",  # torchrun
    "test_pipeline.py",  # torchrun, pipeline stages
    "test_trace_facts_cli.py",  # the command, interrupted and resumed
    "test_offload_memory.py",  # a GPT-2-small-shape model half on disk, in a subprocess (~70 s)
    "test_bench_gpu.py",  # benchmarks/gpu.py --device cpu --quick, in a subprocess
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in SLOW_FILES:
            item.add_marker(pytest.mark.slow)
