"""The pure parts of the ssh transport: the xe+ssh:// source, the xe commands built over ssh, and
the reading of xe's output and error texts."""

import pytest

from ansible_collections.xen2kvm.migration.plugins.module_utils._xapi.session import XapiError
from ansible_collections.xen2kvm.migration.plugins.module_utils._xapi.xe_ssh import (
    NULL_REF, XeSshClient, parse_map, parse_minimal, parse_param_list, vm_record, xe_error_details)
from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.stream import (
    SourceError, XeExportSource, is_ssh_source, parse_ssh_source, redacted_source, ssh_command)

UUID = "0f5e6c1a-2b3c-4d5e-8f90-1a2b3c4d5e6f"
HOST_UUID = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"


def test_an_xe_ssh_source_runs_xe_vm_export_to_standard_output():
    src = "xe+ssh://root@xenhost1:2222/?uuid=%s&compress=gzip" % UUID
    assert is_ssh_source(src)
    source = parse_ssh_source(src)
    assert isinstance(source, XeExportSource) and (source.user, source.host, source.port) == ("root", "xenhost1", 2222)
    argv = ssh_command(source, ["UserKnownHostsFile=/k"], "/id")
    assert argv[:2] == ["ssh", "-T"] and "BatchMode=yes" in argv and ["-p", "2222"] == argv[argv.index("-p"):][:2]
    assert argv[-3:] == ["--", "xenhost1", "xe vm-export uuid=%s filename= compress=true" % UUID]
    assert source.url() == src and redacted_source(src) == src


def test_an_xe_ssh_source_defaults_to_zstd_and_quotes_an_xe_path():
    source = parse_ssh_source("xe+ssh://xenhost1/?uuid=%s&xe=/opt/my%%20xe/xe" % UUID)
    assert source.remote_command() == "'/opt/my xe/xe' vm-export uuid=%s filename= compress=zstd" % UUID
    assert source.user is None and source.port is None


@pytest.mark.parametrize("src, words", [
    ("xe+ssh://xenhost1/?uuid=not-a-uuid", "uuid= must be the uuid"),
    ("xe+ssh://xenhost1/?uuid=%s;reboot" % UUID, "uuid= must be the uuid"),
    ("xe+ssh://xenhost1/?uuid=%s&compress=lz4" % UUID, "compress= must be one of"),
    ("xe+ssh://xenhost1/vm?uuid=%s" % UUID, "xe+ssh://[user@]host[:port]/?uuid="),
    ("xe+ssh://xenhost1/?uuid=%s&password=x" % UUID, "unknown: password"),
    ("xe+ssh://root:pw@xenhost1/?uuid=%s" % UUID, "takes no password"),
    ("xe+ssh://xenhost1:99999/?uuid=%s" % UUID, "port is not a number"),
    ("xe+ssh://xenhost1/?uuid=%s&xe=bin/xe" % UUID, "absolute path"),
])
def test_a_bad_xe_ssh_source_is_named(src, words):
    with pytest.raises(SourceError, match=None) as caught:
        parse_ssh_source(src)
    assert words in str(caught.value) and "pw" not in str(caught.value)


def test_xe_commands_go_over_ssh_in_batch_mode_with_the_given_options():
    client = XeSshClient("xenhost1", "root", 2222, "/keys/id", ["UserKnownHostsFile=/k"], "/usr/bin/xe")
    argv = client.argv("vm-param-get", "uuid=%s" % UUID, "param-name=power-state")
    assert "BatchMode=yes" in argv and argv[argv.index("-i") + 1] == "/keys/id" and "UserKnownHostsFile=/k" in argv
    assert argv[-3:] == ["--", "xenhost1", "/usr/bin/xe vm-param-get uuid=%s param-name=power-state" % UUID]
    assert client.argv("vm-list", "name-label=it's mine", "--minimal")[-1] == \
        "/usr/bin/xe vm-list 'name-label=it'\"'\"'s mine' --minimal"
    assert client.export_src(UUID, "none") == "xe+ssh://root@xenhost1:2222/?uuid=%s&compress=none&xe=/usr/bin/xe" % UUID
    with pytest.raises(XapiError, match="ssh_options takes ssh -o options"):
        XeSshClient("xenhost1", ssh_options=["-oProxyCommand=evil"]).argv("vm-list")


def test_a_vm_param_list_becomes_the_record_the_shared_logic_reads():
    text = "\n".join([
        "                   uuid ( RO)    : %s" % UUID,
        "             name-label ( RW): web01",
        "          is-a-template ( RW): false",
        "          is-a-snapshot ( RO): true",
        "            power-state ( RO): running",
        "            resident-on ( RO): %s" % HOST_UUID,
        "           other-config (MRW): xen2kvm_snapshot_of: %s; base_template_name: Debian" % UUID,
        "                   tags (SRW): a; xen2kvm-migrated-to:kvm1/web01",
        "              snapshots (SRO): ",
    ])
    record = vm_record(parse_param_list(text))
    assert record["uuid"] == UUID and record["name_label"] == "web01" and record["power_state"] == "Running"
    assert record["is_a_snapshot"] is True and record["is_a_template"] is False
    assert record["other_config"] == {"xen2kvm_snapshot_of": UUID, "base_template_name": "Debian"}
    assert record["tags"] == ["a", "xen2kvm-migrated-to:kvm1/web01"] and record["snapshots"] == []
    assert record["resident_on"] == HOST_UUID
    assert vm_record({"resident-on": "<not in database>"})["resident_on"] == NULL_REF


def test_minimal_and_map_output():
    assert parse_minimal("a,b\n") == ["a", "b"] and parse_minimal("\n") == []
    assert parse_map("") == {}


@pytest.mark.parametrize("text, details", [
    ("The uuid you supplied was invalid.\ntype: VM\nuuid: %s\n" % UUID, ["UUID_INVALID", "VM", UUID]),
    ("The operation could not be performed because the VM was in the wrong power state.\n"
     "vm: %s (web01)\nexpected: halted\nactual: running\n" % UUID,
     ["VM_BAD_POWER_STATE", "%s (web01)" % UUID, "halted", "running"]),
    ("Error code: SR_BACKEND_FAILURE_44\nError parameters: , There is insufficient space, \n",
     ["SR_BACKEND_FAILURE_44", "There is insufficient space"]),
    ("bash: xe: command not found\n", None),
])
def test_xe_error_texts_become_xapi_error_codes(text, details):
    assert xe_error_details(text) == details


def test_a_failed_xe_command_names_the_host_and_what_xe_said():
    client = XeSshClient("xenhost1")
    client.subject = "VM 'web01'"
    power = client.failure(("vm-export",), 1, "The operation could not be performed because the VM was in the "
                           "wrong power state.\nvm: x (web01)\nexpected: halted\nactual: running\n")
    assert power.code == "VM_BAD_POWER_STATE" and "web01" in str(power) and "xenhost1" in str(power)
    missing = client.failure(("vm-list",), 127, "bash: xe: command not found\n")
    assert missing.code == "XE" and "xenhost1" in str(missing) and "command not found" in str(missing)
    refused = client.failure(("vm-list",), 255, "ssh: connect to host xenhost1 port 22: Connection refused\n")
    assert refused.code == "SSH" and "nothing listens on the ssh port" in str(refused)
    with pytest.raises(XapiError, match="not available with transport ssh"):
        client.call("pool.get_all")
