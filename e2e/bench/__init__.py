"""Benchmarks of the test infrastructure (scripts: they print numbers and assert nothing)."""
