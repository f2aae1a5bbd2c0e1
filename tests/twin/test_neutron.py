"""The twin's Neutron, through python-chi (neutronclient and openstacksdk) as they are.

Servers and their ports are written into the world the way Nova keeps them, so these tests do not
need the twin's Nova.
"""

from __future__ import annotations

import inspect
import ipaddress
import time

import pytest


def shared_network(world) -> tuple[dict, dict]:
    network = next(n for n in world.data["networks"].values() if n["name"] == "sharednet1")
    subnet = next(s for s in world.data["subnets"].values() if s["network_id"] == network["id"])
    return network, subnet


def server_with_port(world, project_id: str, name: str, address: str) -> tuple[str, str]:
    """A server and its port on sharednet1, as Nova records them: (server id, port id)."""
    network, subnet = shared_network(world)
    server_id, port_id = world.new_id(), world.new_id()
    with world.lock:
        world.data["servers"][server_id] = {"id": server_id, "name": name, "status": "ACTIVE", "tenant_id": project_id}
        world.data["ports"][port_id] = {
            "id": port_id, "name": "", "network_id": network["id"], "device_id": server_id,
            "device_owner": "compute:nova", "fixed_ips": [{"subnet_id": subnet["id"], "ip_address": address}],
            "project_id": project_id, "tenant_id": project_id, "status": "ACTIVE", "mac_address": "fa:16:3e:00:00:01",
        }
    return server_id, port_id


def requests_made(twin, last: str, times: int = 1) -> list[str]:
    """The Neutron requests so far, once `last` is among them `times` times (the twin logs a request
    just after answering it, so the client can be a little ahead of the log)."""
    log = twin.world.state_dir / "requests.log"
    for _ in range(100):
        made = [line.rsplit(" ", 1)[0] for line in log.read_text().splitlines() if "/network/" in line]
        if made.count(last) >= times:
            break
        time.sleep(0.02)
    return made


def test_sharednet1_and_public_are_there(chi):
    from chi import network
    from chi.clients import neutron

    shared_id = network.get_network_id("sharednet1")
    shared = network.get_network(shared_id)
    assert shared["shared"] is True and shared["router:external"] is False
    assert ipaddress.ip_network(network.get_subnet(shared["subnets"][0])["cidr"]) == ipaddress.ip_network("10.52.0.0/22")
    external = neutron().list_networks(**{"router:external": True, "fields": ["id", "name"]})["networks"]
    assert external == [{"id": network.get_network_id("public"), "name": "public"}]
    assert network.get_network("public")["name"] == "public"  # by name: show is 404, then list


def test_a_floating_ip_is_allocated_bound_and_released(chi, twin):
    from chi import network, server
    from chi.exception import CHIValueError

    project = chi.session().get_project_id()
    fip = network.get_free_floating_ip()  # the project has none: allocates one on `public`
    address = fip["floating_ip_address"]
    assert ipaddress.ip_address(address).is_loopback
    assert (fip["port_id"], fip["status"], fip["project_id"]) == (None, "DOWN", project)

    server_id, port_id = server_with_port(twin.world, project, "node-mlflow-abc123", "10.52.0.20")
    assert server.associate_floating_ip(server_id) == address
    bound = network.get_floating_ip(address)
    assert (bound["port_id"], bound["fixed_ip_address"], bound["status"]) == (port_id, "10.52.0.20", "ACTIVE")
    assert twin.world.data["floatingips"][fip["id"]]["port_id"] == port_id  # what Nova reads

    network.deallocate_floating_ip(address)
    assert requests_made(twin, f"DELETE /network/v2.0/floatingips/{fip['id']}")[-6:] == [
        "GET /network/v2.0/floatingips",  # get_free_floating_ip, from associate_floating_ip
        f"GET /network/v2.0/ports?device_id={server_id}",  # openstacksdk: the server's ports
        f"PUT /network/v2.0/floatingips/{fip['id']}",  # {"floatingip": {"port_id": ...}}
        "GET /network/v2.0/floatingips",  # get_floating_ip
        "GET /network/v2.0/floatingips",  # deallocate_floating_ip looks the address up...
        f"DELETE /network/v2.0/floatingips/{fip['id']}",  # ...and deletes it by id
    ]
    with pytest.raises(CHIValueError):
        network.get_floating_ip(address)


def test_associate_takes_the_first_unbound_floating_ip_of_the_project_even_a_classmates(chi, twin):
    from chi import network, server
    from chi.clients import neutron
    from chi.exception import ResourceError

    # The path python-chi takes: Server.associate_floating_ip() -> associate_floating_ip(id) ->
    # network.get_free_floating_ip(), the first floating IP of the project list with no port.
    assert "associate_floating_ip(self.id" in inspect.getsource(server.Server.associate_floating_ip)
    assert "chi_network.get_free_floating_ip()" in inspect.getsource(server.associate_floating_ip)
    assert 'ip["port_id"] is None' in inspect.getsource(network.get_free_floating_ip)

    project = chi.session().get_project_id()  # the class's one project: classmates are in it too
    public = network.get_network_id("public")
    classmate = [neutron().create_floatingip({"floatingip": {"floating_network_id": public}})["floatingip"]
                 for _ in range(3)]
    their_server, their_port = server_with_port(twin.world, project, "node-mlflow-classmate", "10.52.0.30")
    neutron().update_floatingip(classmate[0]["id"], {"floatingip": {"port_id": their_port}})

    unbound = sorted((f for f in classmate[1:]), key=lambda f: f["id"])  # Neutron lists by id, not by age
    assert network.get_free_floating_ip(allocate=False)["id"] == unbound[0]["id"]
    mine, _ = server_with_port(twin.world, project, "node-mlflow-abc123", "10.52.0.31")
    taken = server.associate_floating_ip(mine)
    assert taken == unbound[0]["floating_ip_address"]  # a classmate's address, allocated but not yet bound
    assert len(network.list_floating_ips()) == 3  # nothing new was allocated

    # A port that has a floating IP gets no second one (Neutron: 409 FloatingIPPortAlreadyAssociated);
    # python-chi swallows the 409 and says that no port "can route" to the address.
    with pytest.raises(ResourceError, match="None of the ports can route"):
        server.associate_floating_ip(mine, unbound[1]["floating_ip_address"])
    # Naming an address that is bound to another server moves it there: Neutron does not refuse.
    other, other_port = server_with_port(twin.world, project, "node-mlflow-def456", "10.52.0.32")
    moved = server.associate_floating_ip(other, classmate[0]["floating_ip_address"])
    assert moved == classmate[0]["floating_ip_address"]
    assert network.get_floating_ip(moved)["port_id"] == other_port  # no longer the classmate's server


def test_floating_ips_are_scoped_to_the_project(chi, twin):
    from chi import network
    from chi.clients import neutron
    from neutronclient.common.exceptions import NotFound

    other = "0ther0000000000000000000000000000"
    ident, public = twin.world.new_id(), network.get_network_id("public")
    with twin.world.lock:
        twin.world.data["floatingips"][ident] = {
            "id": ident, "project_id": other, "tenant_id": other, "floating_ip_address": twin.world.next_address(),
            "floating_network_id": public, "port_id": None, "fixed_ip_address": None,
            "router_id": None, "status": "DOWN", "description": "", "tags": []}
    assert network.list_floating_ips() == []
    assert neutron().list_floatingips(tenant_id=other)["floatingips"] == []
    with pytest.raises(NotFound) as error:
        neutron().show_floatingip(ident)
    assert f"Floating IP {ident} could not be found" in str(error.value)


def test_binding_a_port_without_a_router_to_public_or_of_another_project_fails(chi, twin):
    from chi.clients import neutron
    from neutronclient.common.exceptions import BadRequest, NotFound, PortNotFoundClient

    project = chi.session().get_project_id()
    client = neutron()
    public = next(n for n in twin.world.data["networks"].values() if n["name"] == "public")
    fip = client.create_floatingip({"floatingip": {"floating_network_id": public["id"]}})["floatingip"]
    _, foreign_port = server_with_port(twin.world, "someone-else", "theirs", "10.52.0.40")
    with pytest.raises(PortNotFoundClient):
        client.update_floatingip(fip["id"], {"floatingip": {"port_id": foreign_port}})
    with pytest.raises(BadRequest):  # sharednet1 is not external
        client.create_floatingip({"floatingip": {"floating_network_id": shared_network(twin.world)[0]["id"]}})
    with pytest.raises(NotFound):
        client.show_port(foreign_port)


def test_security_group_submit_idempotent_reuses_a_group_by_name_without_its_rules(chi, twin):
    from chi import network
    from chi.clients import neutron

    group = network.SecurityGroup({"name": "allow-22", "description": "SSH for the MLflow series"})
    group.add_rule(direction="ingress", protocol="tcp", port=22)
    group.submit(idempotent=True)
    made = neutron().show_security_group(group.id)["security_group"]
    kinds = sorted((r["direction"], r["ethertype"], r["protocol"], r["port_range_min"]) for r in made["security_group_rules"])
    assert kinds == [("egress", "IPv4", None, None), ("egress", "IPv6", None, None), ("ingress", "IPv4", "tcp", 22)]

    again = network.SecurityGroup({"name": "allow-22", "description": "SSH for the MLflow series"})
    again.add_rule(direction="ingress", protocol="tcp", port=22)
    again.submit(idempotent=True)
    assert again.id == group.id
    assert requests_made(twin, "GET /network/v2.0/security-groups", times=2)[-2:] == [
        f"GET /network/v2.0/security-groups/{group.id}", "GET /network/v2.0/security-groups"]  # and no POST

    # A group of that name made earlier without rules (by a classmate, or a run that stopped halfway)
    # is returned as it is: submit(idempotent=True) neither checks nor adds the rules asked for.
    network.SecurityGroup({"name": "allow-8888", "description": "made by hand"}).submit()
    jupyter = network.SecurityGroup({"name": "allow-8888", "description": "Jupyter for the MLflow series"})
    jupyter.add_rule(direction="ingress", protocol="tcp", port=8888)
    jupyter.submit(idempotent=True)
    rules = neutron().show_security_group(jupyter.id)["security_group"]["security_group_rules"]
    assert [r for r in rules if r["direction"] == "ingress"] == []


def test_a_duplicate_rule_is_a_conflict(chi):
    from chi import network
    from chi.clients import neutron
    from neutronclient.common.exceptions import Conflict

    group = network.SecurityGroup({"name": "allow-8000", "description": "MLflow"})
    group.add_rule(direction="ingress", protocol="tcp", port=8000)
    group.submit()
    existing = next(r for r in neutron().list_security_group_rules(security_group_id=group.id)["security_group_rules"]
                    if r["direction"] == "ingress")
    for same in ({"protocol": "tcp"}, {"protocol": "6", "remote_ip_prefix": "0.0.0.0/0", "ethertype": "IPv4"}):
        with pytest.raises(Conflict) as error:
            neutron().create_security_group_rule({"security_group_rule": {
                "security_group_id": group.id, "direction": "ingress", "port_range_min": 8000,
                "port_range_max": 8000, **same}})
        assert str(error.value) == f"Security group rule already exists. Rule id is {existing['id']}."


def test_security_groups_as_neutron_checks_them(chi, twin):
    from chi import network
    from chi.clients import neutron
    from neutronclient.common.exceptions import BadRequest, Conflict

    client = neutron()
    groups = client.list_security_groups()["security_groups"]  # the first list makes the project's default
    assert [g["name"] for g in groups] == ["default"] and len(groups[0]["security_group_rules"]) == 4
    with pytest.raises(Conflict):
        client.delete_security_group(groups[0]["id"])
    with pytest.raises(BadRequest) as error:  # python-chi sends "description": null when none is given
        network.SecurityGroup({"name": "no-description"}).submit()
    assert "Invalid input for description" in str(error.value)
    with pytest.raises(BadRequest):  # a port range needs a protocol
        client.create_security_group_rule({"security_group_rule": {
            "security_group_id": groups[0]["id"], "direction": "ingress", "port_range_min": 22, "port_range_max": 22}})

    group = network.SecurityGroup({"name": "allow-9000", "description": "object store"})
    group.submit()
    _, port_id = server_with_port(twin.world, chi.session().get_project_id(), "vm", "10.52.0.50")
    port = client.update_port(port_id, {"port": {"security_groups": [groups[0]["id"], group.id]}})["port"]
    assert port["security_groups"] == [groups[0]["id"], group.id]
    with pytest.raises(Conflict):  # in use by the port
        client.delete_security_group(group.id)


def test_python_chi_server_delete_does_not_release_its_floating_ips(chi, twin):
    """Server.delete(delete_ips=True) and detach_floating_ip(delete=True) call openstacksdk's
    `conn.network.delete(<floating IP id>)`: a DELETE on /v2.0/<id>, which Neutron answers 404
    and openstacksdk does not raise on. The address stays allocated to the project."""
    from chi import network, server
    from chi.clients import connection

    assert "conn.network.delete(floating_ip_obj[\"id\"])" in inspect.getsource(server.Server.delete)
    fip = network.get_free_floating_ip()
    answer = connection(session=chi.session()).network.delete(fip["id"])
    assert answer.status_code == 404
    assert network.get_floating_ip(fip["floating_ip_address"])["id"] == fip["id"]


def test_lists_page_with_links_as_neutronclient_follows_them(chi):
    from chi.clients import neutron

    client = neutron()
    public = client.list_networks(name="public")["networks"][0]["id"]
    made = {client.create_floatingip({"floatingip": {"floating_network_id": public}})["floatingip"]["id"]
            for _ in range(3)}
    page = client.list_floatingips(retrieve_all=False, limit=2)
    pages = [p["floatingips"] for p in page]
    assert [len(p) for p in pages] == [2, 1] and {f["id"] for p in pages for f in p} == made


def test_a_port_update_with_a_group_twice_is_refused(chi, twin):
    """neutron_lib's uuid_list validator refuses duplicates before anything else (what Nova's
    addSecurityGroup of a group the server already has runs into)."""
    from chi.clients import neutron
    from neutronclient.common.exceptions import BadRequest

    client = neutron()
    group = client.create_security_group({"security_group": {"name": "allow-22", "description": ""}})["security_group"]
    _, port_id = server_with_port(twin.world, chi.session().get_project_id(), "vm", "10.52.0.60")
    with pytest.raises(BadRequest) as error:
        client.update_port(port_id, {"port": {"security_groups": [group["id"], group["id"]]}})
    assert str(error.value).startswith(
        f"Invalid input for security_groups. Reason: Duplicate items in the list: '{group['id']}'.")
    assert twin.world.data["ports"][port_id].get("security_groups") is None  # unchanged


def public_id(world) -> str:
    return next(n["id"] for n in world.data["networks"].values() if n["name"] == "public")


def test_the_floating_ip_faults_answer_as_neutron_does(chi, twin):
    from chi.clients import neutron
    from neutronclient.common.exceptions import IpAddressGenerationFailureClient, OverQuotaClient

    client, public = neutron(), public_id(twin.world)
    twin.world.inject("floating-ips-exhausted")
    with pytest.raises(IpAddressGenerationFailureClient) as empty:
        client.create_floatingip({"floatingip": {"floating_network_id": public}})
    assert empty.value.status_code == 409
    assert str(empty.value).startswith(f"No more IP addresses available on network {public}.")
    twin.world.inject("floating-ip-quota")
    with pytest.raises(OverQuotaClient) as over:
        client.create_floatingip({"floatingip": {"floating_network_id": public}})
    assert over.value.status_code == 409
    assert str(over.value).startswith("Quota exceeded for resources: ['floatingip'].")
    assert client.list_floatingips()["floatingips"] == []  # neither took an address
    client.create_floatingip({"floatingip": {"floating_network_id": public}})  # each fault is used up


def allocated(world, project: str, count: int) -> None:
    """`count` floating IPs of `project`, written as Neutron keeps them."""
    public = public_id(world)
    with world.lock:
        for _ in range(count):
            ident = world.new_id()
            world.data["floatingips"][ident] = {
                "id": ident, "project_id": project, "tenant_id": project, "floating_ip_address": world.next_address(),
                "floating_network_id": public, "port_id": None, "fixed_ip_address": None, "router_id": None,
                "status": "DOWN", "description": "", "tags": []}


def test_a_used_up_quota_and_an_empty_pool_are_refused_for_real(chi, twin):
    """Without the faults: Neutron's default quota_floatingip (50, neutron/conf/quota.py) counted
    per project, and the external network's pool (here the twin's loopback /24) shared by all."""
    from chi.clients import neutron
    from neutronclient.common.exceptions import IpAddressGenerationFailureClient, OverQuotaClient

    client, public, project = neutron(), public_id(twin.world), chi.session().get_project_id()
    allocated(twin.world, project, 50)
    with pytest.raises(OverQuotaClient):
        client.create_floatingip({"floatingip": {"floating_network_id": public}})
    allocated(twin.world, "0ther0000000000000000000000000000", 254 - 10 - 50)  # the rest of .10-.253
    client.delete_floatingip(client.list_floatingips()["floatingips"][0]["id"])  # under quota again...
    allocated(twin.world, "0ther0000000000000000000000000000", 1)  # ...and a classmate takes the last address
    with pytest.raises(IpAddressGenerationFailureClient, match=f"No more IP addresses available on network {public}"):
        client.create_floatingip({"floatingip": {"floating_network_id": public}})
