"""The wire protocol: task requests, replies and the topics they travel on."""
