"""The MQTT link: paho-mqtt's network thread bridged to asyncio, and the client factory."""
