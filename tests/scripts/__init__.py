"""Tests of the development scripts in scripts/."""
