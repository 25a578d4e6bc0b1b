"""Executing a plan's runs: the process pool shared by the local launcher and SLURM packs, the
child entry point every run process goes through, the one stop-request mechanism, the
launcher's environment (CPUs, distributed set-up) and the one reader of the SLURM queue."""
