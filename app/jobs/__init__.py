"""Background jobs: the jobs table is the queue; executors only start workers that claim from it."""
