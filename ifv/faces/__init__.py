"""The faces: the ``ifv`` command (a thin Hydra shell), the Python API and network
comparison. Each composes the run machinery; none computes on its own."""
