"""Memory: readings (psutil + cgroups), the context-size governor, and its control loop."""
