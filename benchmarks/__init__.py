"""trio-sessions benchmarks: `python -m benchmarks` (or `trio-sessions bench`) in the repository.

Each scenario (`s1_ceiling.py` ... `s7_latency.py`) measures a figure of the
runtime side by side with its baseline in the same run and compares it with
the target the project set for it. `--quick` runs every scenario at tiny
sizes in seconds (for CI: the suite must keep running, the numbers mean
nothing); a full run also writes `report.md` with plots. See `__main__.py`.
"""
