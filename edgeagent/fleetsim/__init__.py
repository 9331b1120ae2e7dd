"""A fleet of simulated devices in one process, built from the real service
(`edgeagent bench --fleet N`, docs/scale.md): every device is a real Daemon with its own
MQTT link, task store and operators' views; only the model and the memory loop are
scripted."""
