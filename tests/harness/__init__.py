"""Test harnesses: the processes and servers tests start and talk to (Spark standalone cluster, Livy, AWS stubs)."""
