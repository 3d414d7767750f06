"""Training: the run (compose, fit, test, write the run folder), its callbacks and evaluation,
run folders and their status, devices, launch checks and sweeps."""
