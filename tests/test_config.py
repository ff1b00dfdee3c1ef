"""Settings from flags, COMET_* variables and defaults."""

import pytest

from comet import config


def test_defaults():
    settings = config.load([], environ={})
    assert settings.port == 8000 and settings.interval == 10.0
    assert settings.max_message == 65536 and settings.queue_limit == 256
    assert settings.publish_keys is None and settings.host == "0.0.0.0"


def test_flag_beats_environment_beats_default():
    environ = {"COMET_PORT": "9000", "COMET_INTERVAL": "0.5"}
    settings = config.load(["--port", "9100"], environ=environ)
    assert settings.port == 9100 and settings.interval == 0.5


def test_bad_flag_value_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        config.load(["--interval", "-1"], environ={})
    assert "positive number of seconds" in capsys.readouterr().err


def test_bad_environment_value_names_the_variable():
    with pytest.raises(SystemExit, match="COMET_MAX_CONNECTIONS"):
        config.load([], environ={"COMET_MAX_CONNECTIONS": "lots"})


def test_options_table_lists_every_setting():
    table = config.options_table()
    for setting in config.SETTINGS:
        assert setting.env in table
        assert setting.flag in table if setting.flag else setting.secret


def test_usage_doc_carries_the_current_options_table():
    import pathlib
    doc = (pathlib.Path(__file__).parent.parent / "docs" / "usage.rst").read_text()
    assert config.options_table() in doc, "regenerate the table in docs/usage.rst"


def test_redis_cluster_is_a_switch_and_needs_a_redis_url():
    settings = config.load(["--redis", "redis://127.0.0.1:7000", "--redis-cluster"], environ={})
    assert settings.redis_cluster is True
    assert config.load(["--redis", "redis://h:1"], environ={}).redis_cluster is False
    assert config.load(["--redis", "redis://h:1", "--redis-cluster", "off"],
                       environ={}).redis_cluster is False
    assert config.load([], environ={"COMET_REDIS": "redis://h:1",
                                    "COMET_REDIS_CLUSTER": "on"}).redis_cluster is True
    with pytest.raises(SystemExit, match="--redis-cluster needs --redis"):
        config.load(["--redis-cluster"], environ={})
