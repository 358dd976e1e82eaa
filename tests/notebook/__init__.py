"""Tests of p8utils.notebook, one file per module."""
