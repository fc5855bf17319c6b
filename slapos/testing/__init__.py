"""Test-case base classes for software release test suites (see testcase.py)."""
