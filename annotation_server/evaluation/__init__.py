"""Evaluation protocols shared by tests, benchmarks and model cards."""
