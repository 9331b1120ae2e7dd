"""Every MQTT topic the daemon uses, derived from [mqtt] topic_prefix and the device id."""

from __future__ import annotations

from dataclasses import dataclass

# Second topic levels under the fleet's prefix that are not a device's: `fleet` holds the
# fleet's task topic, `clients` the CLI's own topics (cli/fleet.py). A device with one of
# these ids would read every fleet task as its own. (The Ansible role checks the same
# list on the controller, which has no edgeagent installed: filter_plugins/mosquitto.py.)
RESERVED_DEVICE_IDS = ("fleet", "clients")


@dataclass(frozen=True, slots=True)
class Topics:
    prefix: str
    device: str
    shared_group: str | None

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.device}"

    @property
    def tasks(self) -> str:
        return f"{self.base}/tasks"

    @property
    def fleet_tasks(self) -> str:
        return f"{self.prefix}/fleet/tasks"

    @property
    def fleet_subscription(self) -> str | None:
        # MQTT v5 shared subscription: the broker gives each fleet task to one member.
        return f"$share/{self.shared_group}/{self.fleet_tasks}" if self.shared_group else None

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def heartbeat(self) -> str:
        return f"{self.base}/heartbeat"

    @property
    def errors(self) -> str:
        return f"{self.base}/errors"

    def result(self, task_id: str) -> str:
        return f"{self.base}/results/{task_id}"

    def action(self, name: str) -> str:
        return f"{self.base}/actions/{name}"

    def subscriptions(self) -> list[str]:
        fleet = self.fleet_subscription
        return [self.tasks] if fleet is None else [self.tasks, fleet]
