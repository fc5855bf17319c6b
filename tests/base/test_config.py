import pytest

from slapos.base.config import Config, find_config
from slapos.base.errors import ConfigError
from slapos.base.settings import NodeSettings

NODE_CFG = """
[slapos]
computer_id = COMP-1
master_url = http://127.0.0.1:1/
software_root = ~/sr
instance_root = /srv/slapgrid
maximum_periodicity = 60
root_check = false
"""


def write(tmp_path, text, name="slapos.cfg"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_lookup_order(tmp_path, monkeypatch):
    explicit = write(tmp_path, NODE_CFG, "a.cfg")
    from_env = write(tmp_path, NODE_CFG, "b.cfg")
    monkeypatch.setenv("SLAPOS_CONFIGURATION", str(from_env))
    assert find_config(str(explicit)) == explicit
    assert find_config(None) == from_env
    monkeypatch.setenv("SLAPOS_CLIENT_CONFIGURATION", str(explicit))
    assert find_config(None, client=True) == explicit


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(ConfigError, match="nope.cfg.*not found"):
        find_config(str(tmp_path / "nope.cfg"))


def test_missing_key_names_key_and_section(tmp_path):
    cfg = Config(write(tmp_path, "[slapos]\ncomputer_id = X\n"))
    with pytest.raises(ConfigError, match=r"key 'master_url' is missing in section \[slapos\]"):
        NodeSettings.from_config(cfg)
    with pytest.raises(ConfigError, match=r"section \[slapproxy\] is missing"):
        cfg.get("slapproxy", "port")


def test_typed_values_and_tilde(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    settings = NodeSettings.from_config(Config(write(tmp_path, NODE_CFG)))
    assert settings.software_root == tmp_path / "sr"
    assert settings.maximum_periodicity == 60
    assert settings.root_check is False
    assert settings.promise_timeout == 20.0
    cfg = Config(write(tmp_path, "[s]\nflag = maybe\nn = x\n", "bad.cfg"))
    with pytest.raises(ConfigError, match="must be true or false"):
        cfg.get_bool("s", "flag")
    with pytest.raises(ConfigError, match="must be an integer"):
        cfg.get_int("s", "n")


def test_invalid_ini_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="not valid INI") as err:
        Config(write(tmp_path, "no section header\n"))
    assert "\n" not in str(err.value)


def test_partition_timeout_either_spelling_and_bad_value_is_one_line(tmp_path):
    assert NodeSettings.from_config(Config(write(tmp_path, NODE_CFG))).partition_timeout is None
    dashed = Config(write(tmp_path, NODE_CFG + "partition-timeout = 30\n", "dashed.cfg"))
    assert NodeSettings.from_config(dashed).partition_timeout == 30.0
    both = Config(write(tmp_path, NODE_CFG + "partition_timeout = 12.5\npartition-timeout = 30\n", "both.cfg"))
    assert NodeSettings.from_config(both).partition_timeout == 12.5
    bad = Config(write(tmp_path, NODE_CFG + "partition_timeout = soon\n", "bad.cfg"))
    with pytest.raises(ConfigError, match=r"key 'partition_timeout' in section \[slapos\].*must be a number") as err:
        NodeSettings.from_config(bad)
    assert "\n" not in str(err.value)


def test_node_command_line_overrides(tmp_path):
    import argparse

    from slapos.cli.command import add_node_options, comma_list, node_settings

    parser = argparse.ArgumentParser()
    add_node_options(parser, "software_root", "instance_root", "master_url")
    parser.add_argument("--pidfile")
    args = parser.parse_args(["--cfg", str(write(tmp_path, NODE_CFG)), "--software_root", str(tmp_path / "sr2"),
                              "--master-url", "http://10.0.0.1/", "--pidfile", str(tmp_path / "x.pid")])
    config, settings = node_settings(args, pidfile="pidfile_report")
    assert config.path == tmp_path / "slapos.cfg"
    assert settings.software_root == tmp_path / "sr2"
    assert settings.instance_root.as_posix() == "/srv/slapgrid"  # not given: the configuration's
    assert settings.master_url == "http://10.0.0.1/"
    assert settings.pidfile_report == tmp_path / "x.pid"
    assert settings.pidfile_instance != tmp_path / "x.pid"
    assert comma_list(["a, b", " ,c", ""]) == ["a", "b", "c"]
    assert comma_list(None) == []
