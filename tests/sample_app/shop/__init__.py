"""A sample application that enqueues jobs, tested with liteq's pytest plugin."""
