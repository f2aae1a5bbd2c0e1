"""The server and its release through python-chi, against the twin's Nova, Neutron and SSH nodes:
what replaced the stand-ins of chi.server.Server and the clients (shared projects included)."""

from __future__ import annotations

import time

import pytest

from chi_helpers import parameters
from chi_helpers.chameleon import floating_ip, login, release, reservation
from chi_helpers.chameleon import server as node_server
from chi_helpers.variants import VARIANTS

NVIDIA, AMD, VM = VARIANTS["nvidia"], VARIANTS["amd"], VARIANTS["vm"]


@pytest.fixture
def cloud(twin_with_nodes, clean_environment, monkeypatch):
    import chi.context
    import chi.hardware

    url = twin_with_nodes.environment()["CHI_RESOURCE_API_URL"]
    monkeypatch.setattr(chi.context, "RESOURCE_API_URL", url)
    monkeypatch.setattr(chi.hardware, "RESOURCE_API_URL", url)
    monkeypatch.setattr("sys.stdin", open("/dev/null"))  # Fabric forwards stdin; pytest's cannot be read
    login.sign_in(str(twin_with_nodes.rc_file), "", "CHI@TACC", need_key_pair=True, say=lambda _: None)
    return twin_with_nodes


def active_lease(profile, name="mlflow_abc123", node="liqid01"):
    lease = reservation.submit(profile, name, node if profile.reservation == "node" else None, *reservation.next_block())
    for _ in range(200):  # the twin shortens the wait for the next hour to a few seconds
        if lease.status == "ACTIVE":
            return lease
        time.sleep(0.1)
    raise AssertionError(f"lease stayed {lease.status}")


def world(cloud):
    return cloud.world.data


def test_the_server_comes_up_with_its_own_address_and_ssh(cloud, capsys):
    node = node_server.bring_up(NVIDIA, active_lease(NVIDIA), "abc123")
    [made] = world(cloud)["servers"].values()
    assert made["name"] == "node-mlflow-abc123" and made["status"] == "ACTIVE"
    image = next(i for i in world(cloud)["images"].values() if i["id"] == made["image"]["id"])
    assert image["name"] == "CC-Ubuntu24.04-CUDA"
    [address] = world(cloud)["floatingips"].values()
    assert address["description"] == "mlflow series: node-mlflow-abc123" and address["port_id"]
    assert "A100" in node.execute("nvidia-smi").stdout  # SSH with the key pair the RC file names
    assert f"address {address['floating_ip_address']}" in capsys.readouterr().out


def test_bringing_it_up_again_keeps_the_server_and_its_address(cloud, capsys):
    lease = active_lease(AMD, node="P3-GPU-009")
    node_server.bring_up(AMD, lease, "abc123")
    node_server.bring_up(AMD, lease, "abc123")
    assert len(world(cloud)["servers"]) == 1 and len(world(cloud)["floatingips"]) == 1
    assert "already has floating IP" in capsys.readouterr().out


def test_a_classmates_free_address_is_left_to_them(cloud):
    from chi.network import get_network_id, neutron

    theirs = neutron().create_floatingip({"floatingip": {"floating_network_id": get_network_id("public")}})
    theirs = theirs["floatingip"]["floating_ip_address"]
    node = node_server.bring_up(NVIDIA, active_lease(NVIDIA), "abc123")
    assert node.get_floating_ip() != theirs  # python-chi's default would have taken it
    mine = {ip["floating_ip_address"]: ip for ip in world(cloud)["floatingips"].values()}
    assert mine[theirs]["port_id"] is None


def test_a_server_in_error_says_what_to_do(cloud):
    lease = active_lease(NVIDIA)
    cloud.world.inject("server-error")
    with pytest.raises(node_server.ServerError, match="is in ERROR.*release --user abc123"):
        node_server.bring_up(NVIDIA, lease, "abc123")
    assert not world(cloud)["floatingips"]  # no address was taken for it


def test_a_lease_not_yet_active_is_refused_before_any_request(cloud):
    import chi.lease

    lease = reservation.submit(NVIDIA, "mlflow_abc123", "liqid01", *reservation.next_block())
    lease = chi.lease.get_lease(lease.id)
    if lease.status == "PENDING":
        with pytest.raises(node_server.ServerError, match="is PENDING, not ACTIVE"):
            node_server.bring_up(NVIDIA, lease, "abc123")
        assert not world(cloud)["servers"]


def test_the_vm_goes_on_its_flavor_and_opens_the_series_ports_even_in_a_group_made_before(cloud, capsys):
    from chi.network import neutron

    # KVM@TACC has a Keystone of its own: sign in there with the credential (RC file) it handed out.
    login.sign_in(str(cloud.kvm_rc_file), "", "KVM@TACC", need_key_pair=True, say=lambda _: None)
    # A classmate made allow-8000 by hand, without its rule: it must get the rule, not be taken as is.
    neutron().create_security_group({"security_group": {"name": "allow-8000", "description": "made by hand"}})
    lease = active_lease(VM, name="mlflow_vm")
    node_server.bring_up(VM, lease, "abc123")
    [made] = world(cloud)["servers"].values()
    import chi.server

    flavor = chi.server.nova().servers.get(made["id"]).flavor
    assert flavor["original_name"].startswith("reservation:")  # the flavor Blazar made for the lease
    groups = {g["name"]: g for g in world(cloud)["security_groups"].values()}
    # The object store is on the node's loopback (reached through an SSH tunnel): no group opens it.
    assert not {"allow-9000", "allow-9001"} & set(groups)
    for port in (22, 8000, 8888):
        rules = [r for r in world(cloud)["security_group_rules"].values()
                 if r["security_group_id"] == groups[f"allow-{port}"]["id"] and r["direction"] == "ingress"]
        assert [(r["protocol"], r["port_range_min"], r["port_range_max"]) for r in rules] == [("tcp", port, port)]
    on_server = {g["name"] for g in chi.server.nova().servers.get(made["id"]).security_groups}
    assert on_server >= {f"allow-{p}" for p in (22, 8000, 8888)}

    # Notebook 02 run again: Nova would add each group a second time and answer 400 (Neutron refuses
    # the duplicate), so only the groups the server lacks are added.
    capsys.readouterr()
    node_server.bring_up(VM, lease, "abc123")
    [port] = [p for p in world(cloud)["ports"].values() if p["device_id"] == made["id"]]
    assert sorted(port["security_groups"]) == sorted(set(port["security_groups"]))
    assert "already has floating IP" in capsys.readouterr().out


def test_a_lease_of_the_wrong_kind_is_named(cloud):
    with pytest.raises(node_server.ServerError, match="reserves no flavor"):
        node_server.bring_up(VM, active_lease(NVIDIA), "abc123")


def test_release_stops_deletes_releases_and_ends_and_again_finds_nothing(cloud):
    node_server.bring_up(NVIDIA, active_lease(NVIDIA), "abc123")
    address = next(iter(world(cloud)["floatingips"].values()))["floating_ip_address"]
    outcome = release.release("mlflow_abc123", "abc123", say=lambda _: None)
    # This node was never set up (no Docker): release says so, and deletes the server all the same.
    assert outcome["stack"].startswith("could not stop the containers") and "docker: command not found" in outcome["stack"]
    del outcome["stack"]
    assert outcome == {
        "server": "deleted server node-mlflow-abc123",
        "floating_ip": f"released {address}",
        "lease": "ended lease mlflow_abc123",
    }
    assert not world(cloud)["servers"] and not world(cloud)["floatingips"] and not world(cloud)["leases"]
    again = release.release("mlflow_abc123", "abc123", say=lambda _: None)
    assert again["server"] == "no server named node-mlflow-abc123: nothing to delete"
    assert again["lease"] == "no lease named mlflow_abc123: nothing to end"


def test_release_leaves_other_peoples_servers(cloud):
    node_server.bring_up(NVIDIA, active_lease(NVIDIA, name="mlflow_other", node="liqid02"), "someone")
    node_server.bring_up(NVIDIA, active_lease(NVIDIA), "abc123")
    release.release("mlflow_abc123", "abc123", say=lambda _: None)
    assert [s["name"] for s in world(cloud)["servers"].values()] == ["node-mlflow-someone"]
    assert [lease["name"] for lease in world(cloud)["leases"].values()] == ["mlflow_other"]


def test_bad_names_are_refused_before_any_call(cloud):
    before = (cloud.world.state_dir / "requests.log").read_text()
    with pytest.raises(parameters.ParameterError, match="lease_name is empty"):
        release.release("", "abc123")
    assert (cloud.world.state_dir / "requests.log").read_text() == before


def test_a_dropped_ssh_connection_is_tried_again_once(cloud, capsys):
    from chi_helpers.chameleon import node_setup

    node = node_server.bring_up(NVIDIA, active_lease(NVIDIA), "abc123")
    cloud.world.inject("ssh-drops")
    output = node_setup.run(node, node_setup.Step("gpus", "the GPUs", "nvidia-smi"), retry_after=0.5)
    assert "A100" in output
    assert "the SSH connection dropped" in capsys.readouterr().out
    cloud.world.inject("ssh-drops", count=2)
    with pytest.raises(node_setup.StepFailed, match="failed twice.*run this notebook again"):
        node_setup.run(node, node_setup.Step("gpus", "the GPUs", "nvidia-smi"), retry_after=0.5)


def test_the_address_is_waited_for_until_nova_shows_it(cloud, capsys):
    """Nova lists a floating IP in the server's addresses seconds after Neutron binds it (its cache is
    refreshed on Neutron's batched network-changed event); python-chi's SSH and checks read Nova's."""
    cloud.world.network_changed_seconds = 2.5
    node = node_server.bring_up(NVIDIA, active_lease(NVIDIA), "abc123")
    [address] = [ip["floating_ip_address"] for ip in world(cloud)["floatingips"].values()]
    out = capsys.readouterr().out
    assert f"waiting for Nova to list {address}" in out
    assert f"address {address}" in out and f"ssh -i {cloud.environment()['OS_KEYPAIR_PRIVATE_KEY']} cc@{address}" in out
    assert node.get_floating_ip() == address


def test_release_finds_an_address_nova_does_not_list_yet(cloud):
    """A run stopped right after the floating IP was bound: Nova's addresses do not show it yet, Neutron does."""
    node_server.bring_up(NVIDIA, active_lease(NVIDIA), "abc123")
    [fip] = world(cloud)["floatingips"].values()
    cloud.world.network_changed_seconds = 600
    import chi.network

    port = fip["port_id"]
    chi.network.neutron().update_floatingip(fip["id"], {"floatingip": {"port_id": None}})
    chi.network.neutron().update_floatingip(fip["id"], {"floatingip": {"port_id": port}})  # bound again just now
    outcome = release.release("mlflow_abc123", "abc123", stop_stack=False, say=lambda _: None)
    assert outcome["floating_ip"] == f"released {fip['floating_ip_address']}"
    assert not world(cloud)["floatingips"]


def test_no_floating_ip_to_be_had_says_what_to_do(cloud):
    lease = active_lease(NVIDIA)
    cloud.world.inject("floating-ips-exhausted")
    with pytest.raises(floating_ip.FloatingIPError) as empty:
        node_server.bring_up(NVIDIA, lease, "abc123")
    assert "no public (floating) IP address left" in str(empty.value)
    assert "Network > Floating IPs" in str(empty.value) and "instructor" in str(empty.value)
    cloud.world.inject("floating-ip-quota")
    with pytest.raises(floating_ip.FloatingIPError) as over:
        node_server.bring_up(NVIDIA, lease, "abc123")
    assert "quota of floating IPs" in str(over.value)
    assert "Network > Floating IPs" in str(over.value) and "instructor" in str(over.value)
    assert not world(cloud)["floatingips"]
    node_server.bring_up(NVIDIA, lease, "abc123")  # once one is free: the same server gets it
    assert len(world(cloud)["servers"]) == 1 and len(world(cloud)["floatingips"]) == 1
