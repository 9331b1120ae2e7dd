"""A reload keeps the sections bound at start and names the ones it could not apply."""

from __future__ import annotations

from support.fake_engine import service_config

from edgeagent.config.reload import RESTART_SECTIONS, reloaded


def test_live_sections_change_and_restart_sections_stay_as_running():
    running = service_config(queue={"size": 4}, device={"id": "dev1"}, mqtt={"port": 1883})
    new = service_config(queue={"size": 9}, device={"id": "dev2"}, mqtt={"port": 1884})
    cfg, needs_restart = reloaded(running, new)
    assert cfg.queue.size == 9
    assert (cfg.device, cfg.mqtt) == (running.device, running.mqtt)
    assert needs_restart == ["device", "mqtt"]


def test_an_unchanged_file_needs_no_restart():
    running = service_config()
    cfg, needs_restart = reloaded(running, service_config())
    assert needs_restart == []
    assert cfg == running


def test_every_restart_section_is_a_config_section():
    fields = set(type(service_config()).model_fields)
    assert set(RESTART_SECTIONS) <= fields
