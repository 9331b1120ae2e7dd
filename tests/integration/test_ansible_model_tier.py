"""The role's model tier, evaluated by the real ansible-playbook (seconds, no hosts booted).

The role's own tasks/model_tier.yml runs against localhost aliases (connection local)
whose memory is given in the inventory as `ansible_memtotal_mb`, what a "4 GB" Pi and
its neighbours report, plus one alias without it, whose memory the task gathers for
real. Each host's resolved model variables (file, sha256, source, what config.toml
says) are written out and compared with the tier it must get.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from support.fleet import ANSIBLE_DIR, ansible_env

LARGE = "qwen-coder-1.5b"
SMALL = "qwen-coder"
LARGE_FILE = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
SMALL_FILE = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
LARGE_SHA = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
SMALL_SHA = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
SMOLLM2_SHA = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SRC_DIR = "/srv/models"

# host -> (its inventory variables, the tier it must get)
HOSTS: dict[str, tuple[dict[str, Any], str]] = {
    "pi4-4gb": ({"ansible_memtotal_mb": 3796}, LARGE),  # Raspberry Pi 4 Model B, 4 GB
    "pi4-4gb-gpu256": ({"ansible_memtotal_mb": 3552}, LARGE),  # gpu_mem=256
    "pi5-8gb": ({"ansible_memtotal_mb": 8059}, LARGE),
    "pi4-2gb": ({"ansible_memtotal_mb": 1848}, SMALL),
    "pi3-1gb": ({"ansible_memtotal_mb": 906}, SMALL),
    "forced-small": ({"ansible_memtotal_mb": 8059, "edgeagent_model_tier": SMALL}, SMALL),
    "forced-large": ({"ansible_memtotal_mb": 1848, "edgeagent_model_tier": LARGE}, LARGE),
    "downloads": (
        {"ansible_memtotal_mb": 1848, "edgeagent_model_tier_url": "https://models.example/m/"},
        SMALL,
    ),
    # A site mirror wins over the fleet-wide download URL.
    "site-mirror": (
        {
            "ansible_memtotal_mb": 3796,
            "edgeagent_model_tier_url": "https://models.example/m/",
            "edgeagent_model_mirror_url": "http://mirror.site-a.lan/models/",
        },
        LARGE,
    ),
    "own-model": (
        {
            "ansible_memtotal_mb": 3796,
            "edgeagent_model_src": "/srv/other/SmolLM2-135M-Instruct.Q4_1.gguf",
            "edgeagent_model_sha256": SMOLLM2_SHA,
        },
        LARGE,
    ),
}

PLAYBOOK = """
- name: Resolve the model tier
  hosts: all
  gather_facts: false
  tasks:
    - name: The role's tier tasks
      ansible.builtin.include_role:
        name: edgeagent
        tasks_from: model_tier.yml
        public: true  # its variables, for the next task
    - name: Write what the host resolved
      ansible.builtin.copy:
        content: >-
          {{ {'tier': edgeagent_model_tier_chosen.name, 'src': edgeagent_model_src,
          'url': edgeagent_model_url, 'sha256': edgeagent_model_sha256,
          'filename': edgeagent_model_filename, 'origin': edgeagent_model_origin,
          'memtotal_mb': ansible_memtotal_mb | int,
          'catalog': edgeagent_settings.catalog} | to_json }}
        dest: "{{ out_dir }}/{{ inventory_hostname }}.json"
        mode: "0644"
"""


def _run(ansible_bin: Path, tmp_path: Path, hosts: dict[str, dict[str, Any]]) -> tuple[int, str]:
    common = {
        "ansible_connection": "local",
        "ansible_python_interpreter": str(ansible_bin / "python"),
        "edgeagent_model_tier_src_dir": SRC_DIR,
    }
    inventory = {"all": {"hosts": {name: {**common, **v} for name, v in hosts.items()}}}
    (tmp_path / "inventory.json").write_text(json.dumps(inventory))
    (tmp_path / "tier.yml").write_text(PLAYBOOK)
    (tmp_path / "out").mkdir()
    proc = subprocess.run(
        [
            str(ansible_bin / "ansible-playbook"),
            "-i",
            str(tmp_path / "inventory.json"),
            "-e",
            f"out_dir={tmp_path / 'out'}",
            str(tmp_path / "tier.yml"),
        ],
        cwd=ANSIBLE_DIR,
        env=ansible_env(ansible_bin, tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return proc.returncode, proc.stdout + proc.stderr


def _resolved(tmp_path: Path, host: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((tmp_path / "out" / f"{host}.json").read_text())
    return result


def test_each_host_gets_the_tier_of_its_memory(ansible_bin: Path, tmp_path: Path) -> None:
    hosts = {name: variables for name, (variables, _) in HOSTS.items()}
    hosts["gathered"] = {}  # no memory in the inventory: the task reads the real one
    returncode, output = _run(ansible_bin, tmp_path, hosts)
    assert returncode == 0, output

    for host, (variables, tier) in HOSTS.items():
        resolved = _resolved(tmp_path, host)
        assert resolved["tier"] == tier, (host, resolved)
        # The instruction screen's ceiling is the tier model's (docs/models.md).
        ceiling = {LARGE: 0.9, SMALL: 0.3}[tier] if host != "own-model" else None
        assert resolved["catalog"] == {"max_instruction_score": ceiling}, host
        if host == "own-model":
            assert resolved["sha256"] == SMOLLM2_SHA
            assert resolved["filename"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
            assert resolved["origin"] == f"set in the inventory (the tier would be {LARGE})"
            continue
        filename, sha = (LARGE_FILE, LARGE_SHA) if tier == LARGE else (SMALL_FILE, SMALL_SHA)
        assert resolved["filename"] == filename, host
        assert resolved["sha256"] == sha, host
        if host == "downloads":
            assert (resolved["src"], resolved["url"]) == (
                "",
                f"https://models.example/m/{filename}",
            )
        elif host == "site-mirror":
            assert (resolved["src"], resolved["url"]) == (
                "",
                f"http://mirror.site-a.lan/models/{filename}",
            )
        else:
            assert (resolved["src"], resolved["url"]) == (f"{SRC_DIR}/{filename}", "")
        how = "edgeagent_model_tier" if "edgeagent_model_tier" in variables else "from the memory"
        assert resolved["origin"] == f"tier {tier} ({how})", host
        assert f"{host}: model {filename}, tier {tier}" in output

    meminfo = Path("/proc/meminfo").read_text().split("\n")
    memtotal_kb = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal:"))
    gathered = _resolved(tmp_path, "gathered")
    assert gathered["memtotal_mb"] == memtotal_kb // 1024
    assert gathered["tier"] == (LARGE if memtotal_kb // 1024 >= 3072 else SMALL)


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"edgeagent_model_tier": "qwen-coder-7b"}, "is not one of the tiers"),
        (
            {"ansible_memtotal_mb": 3796, "edgeagent_model_tiers": []},
            "edgeagent_model_tiers is empty",
        ),
    ],
)
def test_a_tier_that_cannot_be_chosen_stops_the_host(
    ansible_bin: Path, tmp_path: Path, variables: dict[str, Any], message: str
) -> None:
    returncode, output = _run(
        ansible_bin, tmp_path, {"bad": variables, "good": {"ansible_memtotal_mb": 906}}
    )
    assert returncode == 2, output
    assert message in output
    assert not (tmp_path / "out" / "bad.json").exists()
    assert _resolved(tmp_path, "good")["tier"] == SMALL
