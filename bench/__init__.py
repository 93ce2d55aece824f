"""Benchmarks and drills, run by hand from the repository root as modules:
`.venv/bin/python -m bench.<script> [flags]` (bench/README.md). A package, so the scripts
share bench/bench_common.py by import, without patching sys.path. Not in the wheel."""
