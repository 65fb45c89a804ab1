"""Benchmarks, run by hand from the repository root as `python -m benchmarks.<name>` (not tests).

Results, with machine, command and date, go to `benchmarks/RESULTS.md`; artefacts (grids, reports, logs)
under `benchmarks/results/<study>/`.
"""
