"""A sample Starlette application that enqueues jobs from its handlers."""
