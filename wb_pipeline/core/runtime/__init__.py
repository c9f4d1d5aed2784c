"""Process-level helpers: isolated subprocesses for memory-heavy stages (memory) and the
fold-parallel worker pool (worker_pool)."""
