"""The twin's Nova, through python-chi, novaclient and openstacksdk as they are (no mocks).

Leases are written straight into the world in Blazar's shape, so these tests depend on Nova's rules
for reservations, not on the Blazar twin's lease handling.
"""

from __future__ import annotations

import time
from datetime import timedelta, timezone

import pytest
import requests

LEASE_DATE = "%Y-%m-%dT%H:%M:%S.%f"


# --- helpers ------------------------------------------------------------------------------------------


def project_id(twin) -> str:
    return next(iter(twin.world.data["projects"]))


def token(twin) -> str:
    env = twin.environment()
    answer = requests.post(f"{twin.url}/v3/auth/tokens", timeout=5, json={"auth": {"identity": {
        "methods": ["application_credential"], "application_credential": {
            "id": env["OS_APPLICATION_CREDENTIAL_ID"], "secret": env["OS_APPLICATION_CREDENTIAL_SECRET"]}}}})
    return answer.headers["X-Subject-Token"]


def a_host(world) -> str:
    if not world.data["hosts"]:
        world.data["hosts"]["host-1"] = {"id": "host-1", "node_name": "liqid01", "hypervisor_hostname": "liqid01"}
    return next(iter(world.data["hosts"]))


def lease(world, project: str, status: str = "ACTIVE", resource_type: str = "physical:host", **reservation) -> str:
    """A lease as Blazar keeps it, ACTIVE now or PENDING two days out; returns its reservation id."""
    now = world.now().astimezone(timezone.utc).replace(tzinfo=None)
    start = now - timedelta(minutes=5) if status == "ACTIVE" else now + timedelta(days=2)
    lease_id, reservation_id = world.new_id(), world.new_id()
    item = {"id": reservation_id, "lease_id": lease_id, "resource_type": resource_type,
            "status": status.lower(), **reservation}
    if resource_type == "physical:host":
        host = a_host(world)
        item.update({"_hosts": [host], "_host_ids": [host]})
    with world.lock:
        world.data["leases"][lease_id] = {
            "id": lease_id, "name": "mlflow_test", "status": status, "project_id": project,
            "start_date": start.strftime(LEASE_DATE), "end_date": (start + timedelta(hours=3)).strftime(LEASE_DATE),
            "events": [], "reservations": [item]}
    return reservation_id


def settle(server_id: str, timeout: float = 15) -> object:
    """The server (novaclient) once it is out of BUILD."""
    import chi.server

    deadline = time.time() + timeout
    while True:
        server = chi.server.nova().servers.get(server_id)
        if server.status != "BUILD" or time.time() > deadline:
            return server
        time.sleep(0.2)


@pytest.fixture
def node(chi, twin):
    """python-chi set up as the series uses it: a key pair name, the RC file's public key."""
    chi.set("keypair_name", "twin-key")
    return twin


def launch(name: str, reservation_id: str | None, **kwargs):
    """Server.submit without python-chi's 5-second polling: returns the server once settled."""
    import chi.server

    server = chi.server.Server(name, reservation_id=reservation_id, image_name="CC-Ubuntu24.04-CUDA", **kwargs)
    server.submit(wait_for_active=False, show=None)
    return settle(chi.server.get_server_id(name))


# --- versions and microversions ---------------------------------------------------------------------


def test_version_discovery_and_microversion_headers(twin):
    root = requests.get(f"{twin.url}/compute/", timeout=5)
    assert root.status_code == 200
    (current,) = root.json()["versions"]
    assert current["id"] == "v2.1" and current["min_version"] == "2.1" and current["status"] == "CURRENT"
    version = requests.get(f"{twin.url}/compute/v2.1", timeout=5).json()["version"]
    assert version["version"] == "2.95" and version["links"][0]["href"].endswith("/compute/v2.1/")

    headers = {"X-Auth-Token": token(twin)}
    asked = requests.get(f"{twin.url}/compute/v2.1/flavors/detail", timeout=5,
                         headers={**headers, "OpenStack-API-Version": "compute 2.61"})
    assert asked.headers["OpenStack-API-Version"] == "compute 2.61"
    assert asked.headers["X-OpenStack-Nova-API-Version"] == "2.61"
    assert all("extra_specs" in f and "description" in f for f in asked.json()["flavors"])
    plain = requests.get(f"{twin.url}/compute/v2.1/flavors/detail", headers=headers, timeout=5)
    assert plain.headers["X-OpenStack-Nova-API-Version"] == "2.1"
    assert not any("extra_specs" in f for f in plain.json()["flavors"])
    legacy = requests.get(f"{twin.url}/compute/v2.1/flavors", timeout=5,
                          headers={**headers, "X-OpenStack-Nova-API-Version": "latest"})
    assert legacy.headers["OpenStack-API-Version"] == "compute 2.95"
    too_new = requests.get(f"{twin.url}/compute/v2.1/flavors", timeout=5,
                           headers={**headers, "OpenStack-API-Version": "compute 2.200"})
    assert too_new.status_code == 406 and "maximum is 2.95" in too_new.json()["computeFault"]["message"]
    missing = requests.get(f"{twin.url}/compute/v2.1/servers/nothing-here", headers=headers, timeout=5)
    assert missing.status_code == 404 and missing.json()["itemNotFound"]["code"] == 404
    assert requests.get(f"{twin.url}/compute/v2.1/servers", timeout=5).status_code == 401


def test_flavors_as_python_chi_reads_them(chi, twin):
    import chi.server

    names = {f.name for f in chi.server.list_flavors()}
    assert {"baremetal", "g1.h100.pci.1"} <= names
    assert [f.name for f in chi.server.list_flavors(gpu=True)] == ["g1.h100.pci.1"]
    assert chi.server.get_flavor("baremetal").name == "baremetal"
    # A flavor reservation's flavor, as Blazar makes it: private, given to the project once the lease starts.
    world, project = twin.world, project_id(twin)
    reservation_id = lease(world, project, resource_type="flavor:instance", amount=1)
    base = next(f for f in world.data["flavors"].values() if f["name"] == "g1.h100.pci.1")
    world.data["flavors"][reservation_id] = {
        **{k: v for k, v in base.items() if k != "id"}, "id": reservation_id, "name": f"reservation:{reservation_id}",
        "os-flavor-access:is_public": False, "_access": [project],
        "extra_specs": {**base["extra_specs"], "aggregate_instance_extra_specs:reservation": reservation_id,
                        "resources:CUSTOM_RESERVATION_" + reservation_id.upper().replace("-", "_"): "1"}}
    (reserved,) = chi.server.list_flavors(reservation_id=reservation_id)
    assert reserved.name == f"reservation:{reservation_id}" and reserved.extras["trait:CUSTOM_GPU"] == "required"
    reservable = {f.name for f in chi.server.list_flavors(reservable=True)}
    assert "g1.h100.pci.1" in reservable and f"reservation:{reservation_id}" not in reservable
    world.data["flavors"][reservation_id]["_access"] = []  # before the lease starts: not visible
    assert chi.server.list_flavors(reservation_id=reservation_id) == []



def test_a_token_without_reader_may_not_read_flavor_extra_specs(twin, member_only_token):
    # nova/policies/flavor_extra_specs.py: index and show are PROJECT_READER_OR_ADMIN.
    flavors = f"{twin.url}/compute/v2.1/flavors"
    flavor = next(f["id"] for f in twin.world.data["flavors"].values() if f.get("extra_specs"))
    member, reader = {"X-Auth-Token": member_only_token}, {"X-Auth-Token": token(twin)}
    refused = requests.get(f"{flavors}/{flavor}/os-extra_specs", headers=member, timeout=5)
    assert refused.status_code == 403  # before: 200
    assert refused.json()["forbidden"]["message"] == \
        "Policy doesn't allow os_compute_api:os-flavor-extra-specs:index to be performed."
    key = next(iter(twin.world.data["flavors"][flavor]["extra_specs"]))
    one = requests.get(f"{flavors}/{flavor}/os-extra_specs/{key}", headers=member, timeout=5)
    assert one.status_code == 403 and "os-flavor-extra-specs:show" in one.json()["forbidden"]["message"]
    assert requests.get(f"{flavors}/{flavor}/os-extra_specs", headers=reader, timeout=5).status_code == 200
    # From 2.61 a flavor shows its extra specs only to those who may read them (nova/api/openstack/compute/flavors.py)
    def shown(headers: dict) -> dict:
        newer = {"OpenStack-API-Version": "compute 2.61"}
        return requests.get(f"{flavors}/{flavor}", headers={**headers, **newer}, timeout=5).json()["flavor"]

    assert "extra_specs" not in shown(member) and "extra_specs" in shown(reader)


# --- servers --------------------------------------------------------------------------------------------


def test_submit_brings_up_one_server_and_get_server_finds_it(node):
    import chi.server
    from novaclient.exceptions import NotFound

    world = node.world
    reservation_id = lease(world, project_id(node))
    server = chi.server.Server("node-mlflow-twin", reservation_id=reservation_id, image_name="CC-Ubuntu24.04-CUDA")
    server.submit(idempotent=True, wait_for_active=True, show=None)
    assert server.status == "ACTIVE"
    (fixed,) = server.addresses["sharednet1"]
    assert fixed["OS-EXT-IPS:type"] == "fixed" and fixed["addr"].startswith("10.52.")
    record = world.data["servers"][server.id]
    assert record["key_name"] == "twin-key" and record["_host"] in world.data["hosts"]
    (port,) = [p for p in world.data["ports"].values() if p["device_id"] == server.id]
    assert port["device_owner"] == "compute:nova" and port["fixed_ips"][0]["ip_address"] == fixed["addr"]

    again = chi.server.Server("node-mlflow-twin", reservation_id=reservation_id, image_name="CC-Ubuntu24.04-CUDA")
    same = again.submit(idempotent=True, wait_for_active=True, show=None)
    assert same.id == server.id and len(world.data["servers"]) == 1

    found = chi.server.get_server("node-mlflow-twin")
    assert (found.id, found.status, found.image_name, found.flavor_name, found.network_name) == (
        server.id, "ACTIVE", "CC-Ubuntu24.04-CUDA", "baremetal", "sharednet1")
    with pytest.raises(NotFound):
        chi.server.get_server("node-mlflow-nobody")


def test_a_lease_that_has_not_started_gives_no_valid_host(node):
    import chi.server

    reservation_id = lease(node.world, project_id(node), status="PENDING")
    server = chi.server.Server("node-too-early", reservation_id=reservation_id, image_name="CC-Ubuntu24.04-CUDA")
    server.submit(wait_for_active=True, show=None)  # python-chi's wait stops at ERROR too
    assert server.status == "ERROR"
    nova_server = chi.server.nova().servers.get(server.id)
    assert nova_server.fault["code"] == 500
    assert nova_server.fault["message"] == "No valid host was found. There are not enough hosts available."
    assert not [p for p in node.world.data["ports"].values() if p["device_id"] == server.id]


def test_no_reservation_or_another_projects_lease_gives_no_valid_host(node):
    assert launch("node-unreserved", None).status == "ERROR"
    theirs = lease(node.world, "another-project")
    assert "No valid host" in launch("node-theirs", theirs).fault["message"]


def test_the_server_error_fault_fails_the_next_server(node):
    reservation_id = lease(node.world, project_id(node))
    node.world.inject("server-error")
    failed = launch("node-broken", reservation_id)
    assert failed.status == "ERROR" and "Exhausted all hosts" in failed.fault["message"]
    assert launch("node-fine", reservation_id).status == "ACTIVE"  # the host was freed, the fault used up


def test_one_server_per_reserved_host_and_names_may_repeat(node):
    import chi.server
    from chi.exception import ResourceError

    reservation_id = lease(node.world, project_id(node))
    assert launch("node-a", reservation_id).status == "ACTIVE"
    nova = chi.server.nova()
    second = nova.servers.create("node-a", image=launch_image(), flavor=chi.server.get_flavor_id("baremetal"),
                                 nics=[{"net-id": chi.network.get_network_id("sharednet1")}], key_name="twin-key",
                                 scheduler_hints={"reservation": reservation_id})
    assert "No valid host" in settle(second.id).fault["message"]  # its one host is taken
    names = sorted(s.name for s in nova.servers.list(search_opts={"name": "node-"}))
    assert names == ["node-a", "node-a"]  # Nova's name filter is a regular expression, and names repeat
    assert nova.servers.list(search_opts={"name": "^node-a$"})
    assert not nova.servers.list(search_opts={"name": "^node-b"})
    with pytest.raises(ResourceError, match="Multiple matching servers"):
        chi.server.get_server("node-a")


def launch_image() -> str:
    import chi.image

    return chi.image.get_image_id("CC-Ubuntu24.04-CUDA")


def test_a_vm_needs_its_flavor_reservation_active(node):
    import chi.server

    world, project = node.world, project_id(node)
    reservation_id = lease(world, project, resource_type="flavor:instance", amount=1)
    base = next(f for f in world.data["flavors"].values() if f["name"] == "g1.h100.pci.1")
    world.data["flavors"][reservation_id] = {
        **{k: v for k, v in base.items() if k != "id"}, "id": reservation_id, "name": f"reservation:{reservation_id}",
        "os-flavor-access:is_public": False, "_access": [project],
        "extra_specs": {**base["extra_specs"], "aggregate_instance_extra_specs:reservation": reservation_id}}
    vm = launch("vm-mlflow", None, flavor_name=f"reservation:{reservation_id}")
    assert vm.status == "ACTIVE" and vm.flavor["original_name"] == f"reservation:{reservation_id}"
    assert launch("vm-unreserved", None, flavor_name="g1.h100.pci.1").status == "ERROR"
    assert launch("vm-second", None, flavor_name=f"reservation:{reservation_id}").status == "ERROR"  # amount 1


# --- key pairs ----------------------------------------------------------------------------------------


def test_python_chi_makes_the_key_pair_from_the_context(node):
    import chi.server
    from chi.keypair import Keypair
    from chi.util import sshkey_fingerprint

    public_key = open(node.environment()["OS_KEYPAIR_PUBLIC_KEY"]).read().strip()
    chi.server.Server("node-keys", image_name="CC-Ubuntu24.04")  # __init__ makes/updates the key pair
    pair = node.world.data["keypairs"]["twin-key"]
    assert pair["public_key"] == public_key and pair["type"] == "ssh"
    assert pair["fingerprint"] == sshkey_fingerprint(public_key)
    assert pair["user_id"] == chi.session().get_user_id()
    made = pair["created_at"]
    chi.server.update_keypair()  # same fingerprint: kept, not made again
    assert node.world.data["keypairs"]["twin-key"]["created_at"] == made
    assert [k.name for k in chi.server.list_keypair()] == ["twin-key"]
    # chi.keypair speaks microversion 2.1 (novaclient "2"): a name from the fingerprint, 200 not 201
    legacy = Keypair()
    assert legacy.key_pair.name.startswith("keypair-") and legacy.key_name in node.world.data["keypairs"]
    nova = chi.server.nova()
    nova.keypairs.delete(legacy.key_name)
    assert legacy.key_name not in node.world.data["keypairs"]


def test_a_key_pair_that_does_not_exist_is_refused(node):
    import chi.server
    from chi.exception import ResourceError
    from novaclient.exceptions import BadRequest, Conflict, NotFound

    server = chi.server.Server("node-nokey", reservation_id=None, image_name="CC-Ubuntu24.04", key_name="nobody")
    assert server.keypair.public_key is None  # python-chi does not make a key pair it was named
    with pytest.raises(ResourceError, match="Invalid key_name provided"):
        server.submit(wait_for_active=False, show=None)
    nova = chi.server.nova()
    with pytest.raises(NotFound):
        nova.keypairs.get("nobody")
    chi.server.update_keypair()
    public_key = node.world.data["keypairs"]["twin-key"]["public_key"]
    with pytest.raises(Conflict):
        nova.keypairs.create("twin-key", public_key=public_key)
    with pytest.raises(BadRequest, match="invalid characters"):  # "." and "@" only from microversion 2.92
        nova.keypairs.create("first.last-jupyter", public_key=public_key)
    with pytest.raises(BadRequest, match="fingerprint"):
        nova.keypairs.create("broken", public_key="ssh-rsa not-a-key")


# --- security groups, floating IPs, delete -------------------------------------------------------


def test_security_groups_floating_ip_and_delete(node):
    import chi.server
    from novaclient.exceptions import NotFound

    world, project = node.world, project_id(node)
    server_id = launch("node-net", lease(world, project)).id
    group_id = world.new_id()
    with world.lock:
        world.data["security_groups"][group_id] = {"id": group_id, "name": "allow-8000", "description": "",
                                                   "project_id": project, "tenant_id": project,
                                                   "security_group_rules": []}
    server = chi.server.get_server("node-net")
    server.add_security_group("allow-8000")
    (port,) = [p for p in world.data["ports"].values() if p["device_id"] == server_id]
    assert group_id in port["security_groups"]
    nova = chi.server.nova()
    assert "allow-8000" in {g["name"] for g in nova.servers.get(server_id).security_groups}
    with pytest.raises(NotFound):
        server.add_security_group("allow-nothing")
    server.remove_security_group("allow-8000")
    assert group_id not in port["security_groups"]

    address = world.next_address()
    fip_id = world.new_id()
    with world.lock:
        world.data["floatingips"][fip_id] = {
            "id": fip_id, "floating_ip_address": address, "port_id": port["id"], "project_id": project,
            "tenant_id": project, "fixed_ip_address": port["fixed_ips"][0]["ip_address"], "status": "ACTIVE",
            "router_id": None, "floating_network_id": "public"}
    assert server.get_floating_ip() == address
    floating = [a for a in server.addresses["sharednet1"] if a["OS-EXT-IPS:type"] == "floating"]
    assert floating[0]["OS-EXT-IPS-MAC:mac_addr"] == port["mac_address"]

    nova.servers.delete(server_id)  # as release.py deletes it
    with pytest.raises(NotFound):
        chi.server.get_server("node-net")
    assert port["id"] not in world.data["ports"]
    fip = world.data["floatingips"][fip_id]
    assert fip["port_id"] is None and fip["fixed_ip_address"] is None  # still the project's, unbound
    with pytest.raises(NotFound):
        nova.servers.delete(server_id)


def test_metadata_and_interfaces(node):
    import chi.server

    server_id = launch("node-meta", lease(node.world, project_id(node))).id
    server = chi.server.get_server("node-meta")
    server.set_metadata_item("owner", "twin")
    assert server.get_metadata() == {"owner": "twin"}
    nova = chi.server.nova()
    (interface,) = nova.servers.interface_list(server_id)
    assert interface.net_id == chi.network.get_network_id("sharednet1") and interface.fixed_ips[0]["ip_address"].startswith("10.52.")


def test_a_server_goes_when_its_lease_ends(node):
    import chi.server
    from novaclient.exceptions import NotFound

    world = node.world
    reservation_id = lease(world, project_id(node))
    server_id = launch("node-ending", reservation_id).id
    (lease_record,) = [l for l in world.data["leases"].values() if l["reservations"][0]["id"] == reservation_id]
    ended = world.now().astimezone(timezone.utc).replace(tzinfo=None) - timedelta(minutes=1)
    with world.lock:
        lease_record["end_date"] = ended.strftime(LEASE_DATE)
    with pytest.raises(NotFound):
        chi.server.nova().servers.get(server_id)
    assert not [p for p in world.data["ports"].values() if p["device_id"] == server_id]


def test_adding_a_group_the_server_has_is_refused_as_neutron_refuses_the_duplicate(node):
    """Nova appends the group to each port's list without looking, Neutron's list validator refuses
    the duplicate (400), and Nova answers 400 with Neutron's words (nova/network/security_group_api.py)."""
    import chi.server
    from chi.clients import neutron
    from novaclient.exceptions import BadRequest, NotFound

    world = node.world
    server_id = launch("node-groups", lease(world, project_id(node))).id
    group = neutron().create_security_group({"security_group": {"name": "allow-8888", "description": ""}})
    group_id = group["security_group"]["id"]
    server = chi.server.get_server("node-groups")
    server.add_security_group("allow-8888")
    with pytest.raises(BadRequest) as error:
        server.add_security_group(group_id)  # by id or by name: the same group
    assert error.value.code == 400
    assert str(error.value.message).startswith(
        f"Invalid input for security_groups. Reason: Duplicate items in the list: '{group_id}'.\n"
        "Neutron server returns request_ids: ['req-")
    (port,) = [p for p in world.data["ports"].values() if p["device_id"] == server_id]
    assert port["security_groups"].count(group_id) == 1
    server.remove_security_group("allow-8888")
    with pytest.raises(NotFound, match=f"Security group allow-8888 not associated with the instance {server_id}"):
        server.remove_security_group("allow-8888")


def test_a_floating_ip_bound_through_neutron_shows_in_addresses_only_once_nova_hears_of_it(node):
    """Neutron tells Nova in batches (neutron/notifiers/nova.py, send_events_interval) and Nova's
    `addresses` come from its network info cache, refreshed on that network-changed event."""
    import chi.server
    from chi import network
    from chi.clients import neutron

    node.world.network_changed_seconds = 1.5
    server_id = launch("node-late-address", lease(node.world, project_id(node))).id
    server = chi.server.get_server("node-late-address")
    bound_at = time.time()
    address = chi.server.associate_floating_ip(server_id)  # python-chi's way: Neutron's PUT
    assert network.get_floating_ip(address)["port_id"]  # Neutron says bound at once...
    assert server.get_floating_ip() is None  # ...Nova does not know yet
    assert chi.server.nova().servers.list(search_opts={"ip": address.replace(".", r"\.")}) == []
    while server.get_floating_ip() is None:
        assert time.time() - bound_at < 10, "Nova never showed the floating IP"
        time.sleep(0.1)
    assert time.time() - bound_at >= 1.5
    assert server.get_floating_ip() == address
    neutron().update_floatingip(network.get_floating_ip(address)["id"], {"floatingip": {"description": "mine"}})
    assert server.get_floating_ip() == address  # an update that keeps the binding changes nothing in Nova
