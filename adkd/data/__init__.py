"""Datasets: one datamodule per benchmark, folder and embedded set, their readers and checks, and
the synthetic anomalies methods train on."""
