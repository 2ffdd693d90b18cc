"""What runs on a worker, next to task code: the task-state accessor (``stateport.worker.state``)."""
