"""Experiments' environments: the Python packages a sweep's trials run with, installed with uv on each host.

A sweep names its requirements in its notebook's folder (`requirements.txt`, or `pyproject.toml` with its
`uv.lock`), or the stack does (`lab:requirements`). `spec` reads them and hashes the environment; `install` runs on
the host (`python -m toolkit.envs.install`): one venv per hash with a Jupyter kernel of its own; `sweep` is the
sweep's preparation step (toolkit.sweeps.prepare) that installs or finds it on each host before its first trial.
"""
