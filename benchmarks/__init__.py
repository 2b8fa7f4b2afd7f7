"""Benchmarks against peers, run as `python -m benchmarks.NAME` (see each module's docstring).

They are importable from any directory once `scripts/setup.sh` has installed the project (its editable
install puts the repository root on `sys.path`); without that install, run them from the repository root.
"""
