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

    def held(self, task_id: str) -> str:
        """A pending hold's retained notice (service/holds)."""
        return f"{self.base}/held/{task_id}"

    @property
    def hold_commands(self) -> list[str]:
        """Where operators confirm or reject held actions: held/<task_id>/<verb>."""
        return [f"{self.base}/held/+/{verb}" for verb in HOLD_VERBS]

    def hold_command(self, topic: str) -> tuple[str, str] | None:
        """(task id level, verb) of a topic under hold_commands; None for any other."""
        head = f"{self.base}/held/"
        if not topic.startswith(head):
            return None
        parts = topic[len(head) :].split("/")
        if len(parts) != 2 or parts[1] not in HOLD_VERBS:  # <id>/<verb>
            return None
        return parts[0], parts[1]

    def subscriptions(self) -> list[str]:
        """The task topics (they size the link's Maximum Packet Size)."""
        fleet = self.fleet_subscription
        return [self.tasks] if fleet is None else [self.tasks, fleet]


HOLD_VERBS = ("confirm", "reject")
