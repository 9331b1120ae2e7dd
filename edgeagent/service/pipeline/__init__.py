"""The task pipeline: admission, the queue, the worker, delivery and dispatch, the task store."""
