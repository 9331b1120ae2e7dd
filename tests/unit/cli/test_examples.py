"""`edgeagent examples list|export|clear` on the state directory a config names."""

from __future__ import annotations

import json

from support.fake_engine import CATALOG

from edgeagent.cli.main import main
from edgeagent.evaluation.cases import parse_cases
from edgeagent.evaluation.suite import make_set
from edgeagent.service.learning.store import LEARNED_FILE, LearnedExample, LearnedStore

CONFIG = """
[model]
path = "/nonexistent/model.gguf"
[state]
dir = "{state}"
[catalog]
learn = true
max_learned_examples = 5
"""


def config(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(CONFIG.format(state=tmp_path / "state"), encoding="utf-8")
    return path


def learn(tmp_path, *texts: str) -> LearnedStore:
    (tmp_path / "state").mkdir(exist_ok=True)
    store = LearnedStore(tmp_path / "state" / LEARNED_FILE, max_rows=5)
    for n, text in enumerate(texts):
        store.add(
            LearnedExample(
                text=text,
                action="set_irrigation",
                args={"zone": n + 1, "minutes": 5},
                decision="edited",
                model_action="set_irrigation",
                model_args={"zone": n + 1, "minutes": 50},
                task_id=f"t{n}",
                by="ana",
                at=1_700_000_000.0 + n,
            )
        )
    return store


def test_list_export_clear(tmp_path, capsys):
    path = config(tmp_path)
    daemon = learn(tmp_path, "Water zone 1 a little.", "Water zone 2 a little.")
    assert main(["examples", "list", "--config", str(path)]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert (listed["count"], listed["max"], listed["learn"]) == (2, 5, True)
    assert [e["input"] for e in listed["examples"]] == [
        "Water zone 2 a little.",
        "Water zone 1 a little.",
    ]
    assert listed["examples"][0]["model"] == {
        "action": "set_irrigation",
        "args": {"zone": 2, "minutes": 50},
    }
    out = tmp_path / "learned.jsonl"
    assert main(["examples", "export", "--config", str(path), "--output", str(out)]) == 0
    cases = parse_cases(out.read_text(encoding="utf-8").splitlines(), str(out))
    make_set("learned", cases, CATALOG)  # what `edgeagent eval out --catalog ...` checks
    assert [c.expect.args for c in cases] == [{"zone": 2, "minutes": 5}, {"zone": 1, "minutes": 5}]
    capsys.readouterr()
    assert main(["examples", "clear", "--config", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["cleared"] == 2
    assert daemon.recent() == []  # the daemon's open connection sees it at once


def test_a_device_that_never_learned_has_nothing_and_gets_no_file(tmp_path, capsys):
    path = config(tmp_path)
    assert main(["examples", "list", "--config", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 0
    assert main(["examples", "export", "--config", str(path)]) == 0
    assert capsys.readouterr().out == ""
    assert main(["examples", "clear", "--config", str(path)]) == 0
    assert not (tmp_path / "state" / LEARNED_FILE).exists()


def test_an_unreadable_file_is_a_typed_error(tmp_path, capsys):
    path = config(tmp_path)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / LEARNED_FILE).write_bytes(b"not a database at all" * 100)
    assert main(["examples", "list", "--config", str(path)]) == 1
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "INTERNAL"
