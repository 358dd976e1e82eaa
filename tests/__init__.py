"""p8utils test suite."""
