"""slapnode:request: a parent instance requests children and a shared instance, and reads what
they publish; the tree converges over several runs as it does under the node."""
from __future__ import annotations

import json

from .conftest import allocated, run_buildout, write_profile

PARENT = """
    [buildout]
    parts = child shared show
    [child]
    recipe = slapnode:request
    software-url = ${slap-connection:software-release-url}
    software-type = backend
    name = child-1
    config-message = Hello child
    config-port = 8081
    return = url user
    [shared]
    recipe = slapnode:request
    software-url = ${slap-connection:software-release-url}
    software-type = backend
    name = shared-1
    shared = true
    config-message = Hello shared
    return = url
    [show]
    recipe = slapnode:template
    inline = {{ child }} {{ user }} {{ shared }}
    output = show.txt
    context =
        key child child:connection-url
        key user child:connection-user
        key shared shared:connection-url
    """

CHILD = """
    [buildout]
    parts = publish publish-shared
    [slap-configuration]
    recipe = slapnode:config
    [publish]
    recipe = slapnode:publish
    url = http://child:${slap-configuration:configuration.port}/
    user = ${slap-configuration:instance-title}
    [publish-shared]
    recipe = slapnode:publish
    -for-each-slave = ${slap-configuration:slave-instance-list}
    url = http://child/shared/{slave_reference}?{message}
    """


def test_tree_converges(request_instance, tmp_path):
    parent = request_instance("root")
    parent_dir = tmp_path / "root"
    write_profile(parent_dir, PARENT, connection=parent.connection)

    # run 1: the child is allocated but has published nothing yet; the parent part fails clearly
    result = run_buildout(parent_dir, check=False)
    assert result.returncode != 0
    assert ("[child] 'child-1' has not published url, user yet (it is still being deployed): "
            "this partition is processed again once it publishes them") in result.stdout

    child = allocated(parent)["child-1"]
    child_parameters = child.partition().getInstanceParameterDict()
    assert child_parameters["message"] == "Hello child" and child_parameters["port"] == "8081"
    assert child_parameters["slap_software_type"] == "backend"
    assert child_parameters["root_instance_title"] == "root"
    # the shared instance found its host: the child (same software release and type)
    assert [s["slave_title"] for s in child_parameters["slave_instance_list"]] == ["root_shared-1"]

    # the child runs its own profile and publishes, for itself and for the shared instance
    stamp = parent.partition().getInstanceParameterDict()["timestamp"]
    write_profile(tmp_path / "child", CHILD, connection=child.connection)
    run_buildout(tmp_path / "child")
    assert parent.partition().getInstanceParameterDict()["timestamp"] != stamp  # parent told

    # run 2: the parent reads everything
    run_buildout(parent_dir)
    assert (parent_dir / "show.txt").read_text() == (
        "http://child:8081/ child-1 http://child/shared/root_shared-1?Hello shared")


def test_json_in_xml_state_and_sla(request_instance, tmp_path):
    parent = request_instance("root")
    connection = dict(parent.connection, **{"requested-state": "stopped"})
    write_profile(tmp_path / "root", """
        [buildout]
        parts = show
        [child]
        recipe = slapnode:request
        software-url = ${slap-connection:software-release-url}
        name = json-child
        serialisation = json-in-xml
        config-names = a b
        config-port = 80
        sla-computer_guid = ${slap-connection:computer-id}
        return = url
        [show]
        recipe = slapnode:template
        inline = {{ url }}
        output = show.txt
        context = key url child:connection-url
        """, connection=connection)
    assert run_buildout(tmp_path / "root", check=False).returncode != 0  # not published yet

    child = allocated(parent)["json-child"]
    assert json.loads(child.partition().getInstanceParameterDict()["_"]) == {"names": "a b", "port": "80"}
    assert child.partition().getState() == "stopped"  # a stopped parent requests its children stopped

    write_profile(tmp_path / "child", """
        [buildout]
        parts = publish
        [slap-configuration]
        recipe = slapnode:config
        [publish]
        recipe = slapnode:publish
        -serialisation = json-in-xml
        url = http://json-child:${slap-configuration:configuration.port}/
        """, connection=child.connection)
    run_buildout(tmp_path / "child")
    run_buildout(tmp_path / "root")
    assert (tmp_path / "root" / "show.txt").read_text() == "http://json-child:80/"


def test_options_checked(tmp_path):
    connection = {"computer-id": "C", "partition-id": "slappart0", "server-url": "http://127.0.0.1:9/"}
    write_profile(tmp_path / "a", """
        [buildout]
        parts = r
        [r]
        recipe = slapnode:request
        software-url = http://sr/software.cfg
        """, connection=connection)
    result = run_buildout(tmp_path / "a", check=False)
    assert result.returncode != 0 and "[r] option 'name' is required" in result.stdout

    write_profile(tmp_path / "b", """
        [buildout]
        parts = r
        [r]
        recipe = slapnode:request
        software-url = http://sr/software.cfg
        name = x
        state = paused
        """, connection=connection)
    result = run_buildout(tmp_path / "b", check=False)
    assert result.returncode != 0 and "[r] state = 'paused': use one of started, stopped, destroyed" in result.stdout
