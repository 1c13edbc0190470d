"""The web demo's conversation log without a browser: file names, records, concurrent appends, images saved once,
failures that do not raise, and the switch that writes nothing."""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import threading

import pytest
from PIL import Image

from llava import constants
from llava.serve import conversation_log as conv_log
from llava.serve.conversation_log import ConversationLog

DAY = datetime.datetime(2024, 3, 7, 23, 59, 30)
STATE = {"system": "s", "roles": ["USER", "ASSISTANT"], "messages": [["USER", "Hi\n<image>"], ["ASSISTANT", "Hello"]],
         "offset": 0, "sep": " ", "sep2": "</s>"}


def test_file_names_are_upstreams():
    assert conv_log.conv_log_filename("/logs", DAY) == "/logs/2024-03-07-conv.json"
    assert conv_log.conv_log_filename(".", datetime.datetime(2025, 11, 30)) == "./2025-11-30-conv.json"
    assert conv_log.image_filename("/logs", "ab" * 16, DAY) == f"/logs/serve_images/2024-03-07/{'ab' * 16}.jpg"


def test_the_log_folder_is_the_environment_variable_else_llava_constants(monkeypatch):
    monkeypatch.delenv("LLAVA_LOGDIR", raising=False)
    assert conv_log.default_logdir() == constants.LOGDIR == "."
    monkeypatch.setenv("LLAVA_LOGDIR", "/srv/llava-logs")
    assert conv_log.default_logdir() == "/srv/llava-logs"
    monkeypatch.setenv("LLAVA_LOGDIR", "")
    assert conv_log.default_logdir() == "."


def test_records_have_upstreams_fields():
    assert conv_log.vote_record("flag", "llava-v1.5-7b", STATE, "10.0.0.1", 1700000000.123456) == {
        "tstamp": 1700000000.1235, "type": "flag", "model": "llava-v1.5-7b", "state": STATE, "ip": "10.0.0.1"}
    with pytest.raises(ValueError, match="'like'"):
        conv_log.vote_record("like", "m", STATE, None, 0.0)
    assert conv_log.chat_record("m", 10.00001, 12.34567, STATE, ["d1"], "::1") == {
        "tstamp": 12.3457, "type": "chat", "model": "m", "start": 10.0, "finish": 12.3457, "state": STATE,
        "images": ["d1"], "ip": "::1"}


def test_concurrent_records_are_whole_lines(tmp_path):
    log = ConversationLog(tmp_path)
    big = {**STATE, "messages": [["USER", "x" * 70_000]]}  # lines longer than any pipe or stdio buffer

    def vote(worker: int) -> None:
        for i in range(40):
            assert log.log_vote("upvote", f"model-{worker}", big if i % 4 == 0 else STATE, f"ip-{i}")

    threads = [threading.Thread(target=vote, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    [path] = tmp_path.iterdir()
    assert path.name == f"{datetime.date.today():%Y-%m-%d}-conv.json"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 6 * 40
    for n in range(6):
        mine = [r for r in records if r["model"] == f"model-{n}"]
        assert [r["ip"] for r in mine] == [f"ip-{i}" for i in range(40)]  # each thread's records, in its order
        assert sum(r["state"] == big for r in mine) == 10


def test_images_are_saved_once_under_their_pixel_hash(tmp_path):
    log = ConversationLog(tmp_path, max_image_pixels=100 * 100)
    red, blue = Image.new("RGB", (64, 48), "red"), Image.new("RGB", (64, 48), "blue")
    digests = log.save_images([red, blue, red.copy()], DAY)
    assert digests[0] == digests[2] == hashlib.md5(red.tobytes()).hexdigest() != digests[1]
    folder = tmp_path / "serve_images" / "2024-03-07"
    assert sorted(p.name for p in folder.iterdir()) == sorted({f"{d}.jpg" for d in digests})  # no temporary left
    with Image.open(folder / f"{digests[0]}.jpg") as saved:
        assert saved.format == "JPEG" and saved.size == (64, 48)
    before = (folder / f"{digests[0]}.jpg").stat()
    assert log.save_images([red], DAY) == digests[:1]
    after = (folder / f"{digests[0]}.jpg").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not written again
    huge = Image.new("RGB", (101, 100))
    assert log.save_images([huge], DAY) == [hashlib.md5(huge.tobytes()).hexdigest()]  # recorded, not saved
    assert len(list(folder.iterdir())) == 2


def test_a_chat_record_names_its_images(tmp_path):
    log = ConversationLog(tmp_path)
    image = Image.new("RGB", (8, 8), "green")
    assert log.log_chat("m", 1.0, 2.0, STATE, [image], "127.0.0.1")
    [path] = [p for p in tmp_path.iterdir() if p.is_file()]
    [record] = [json.loads(line) for line in path.read_text().splitlines()]
    digest = hashlib.md5(image.tobytes()).hexdigest()
    assert record == {"tstamp": 2.0, "type": "chat", "model": "m", "start": 1.0, "finish": 2.0, "state": STATE,
                      "images": [digest], "ip": "127.0.0.1"}
    assert (tmp_path / "serve_images" / f"{datetime.date.today():%Y-%m-%d}" / f"{digest}.jpg").is_file()


def test_a_failed_write_is_logged_not_raised(tmp_path, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    log = ConversationLog(blocker)
    with caplog.at_level(logging.ERROR, logger="llava.serve.gradio_web_server"):
        assert not log.log_vote("downvote", "m", STATE, None)
        assert not log.log_chat("m", 0.0, 1.0, STATE, [Image.new("RGB", (4, 4))], None)
        assert not ConversationLog(tmp_path).log_vote("upvote", "m", {"state": object()}, None)  # not JSON
    assert [r.getMessage().split(":")[1].strip() for r in caplog.records] == [
        "cannot record the downvote in " + str(blocker), "cannot record the answer in " + str(blocker),
        "cannot record the upvote in " + str(tmp_path)]
    assert list(tmp_path.iterdir()) == [blocker]  # the unserialisable record left no partial line behind


def test_a_disabled_log_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    log = ConversationLog(None)
    assert not log.enabled
    assert not log.log_vote("upvote", "m", STATE, "ip")
    assert not log.log_chat("m", 0.0, 1.0, STATE, [Image.new("RGB", (4, 4))], "ip")
    assert list(tmp_path.iterdir()) == []
