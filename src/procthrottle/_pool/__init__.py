"""Layer 3: executors that bound how many tasks (or task sections) run at once."""
