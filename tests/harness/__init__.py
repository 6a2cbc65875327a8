"""Real components for tests and `make run`: Docker Distribution and redis-server processes."""
