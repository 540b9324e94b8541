"""Measurements that the benchmark reports and the tests share. The scripts in ``benchmarks/`` parse the command
line and write the files; what they measure, and the words they write about it, live here."""
