"""Bringing up the series' server: the request, reuse of its address, ERROR, the VM's security groups."""

from __future__ import annotations

from unittest import mock

import pytest

from chi_helpers.chameleon import server as node_server
from chi_helpers.variants import VARIANTS


class FakeServer:
    """Stands in for chi.server.Server: records what the helper asks of it."""

    made: list["FakeServer"] = []
    address: str | None = None  # the floating IP the server already has
    final_status = "ACTIVE"

    def __init__(self, name, reservation_id=None, image_name=None, flavor_name="baremetal", **kwargs):
        self.name, self.reservation_id, self.image_name, self.flavor_name = name, reservation_id, image_name, flavor_name
        self.calls, self.groups, self.status, self.ip = [], [], "BUILD", type(self).address
        FakeServer.made.append(self)

    def submit(self, **kwargs):
        self.calls.append(("submit", kwargs))

    def wait(self, **kwargs):
        self.calls.append(("wait", kwargs))
        self.status = type(self).final_status

    def refresh(self):
        self.status = type(self).final_status

    def get_floating_ip(self):
        return self.ip

    def associate_floating_ip(self):
        self.calls.append(("associate_floating_ip", {}))
        self.ip = "129.114.5.6"

    def check_connectivity(self):
        self.calls.append(("check_connectivity", {}))

    def add_security_group(self, name):
        self.groups.append(name)


def lease(status="ACTIVE", flavor=None):
    made = mock.Mock(status=status, node_reservations=[{"id": "res-42", "resource_type": "physical:host"}])
    made.name = "mlflow_abc123"
    made.get_reserved_flavors.return_value = [mock.Mock()] if flavor else []
    if flavor:
        made.get_reserved_flavors.return_value[0].name = flavor
    return made


@pytest.fixture(autouse=True)
def fake_server():
    FakeServer.made, FakeServer.address, FakeServer.final_status = [], None, "ACTIVE"
    with mock.patch("chi.server.Server", FakeServer):
        yield


def names(server):
    return [c[0] for c in server.calls]


def test_the_server_request(capsys):
    node_server.bring_up(VARIANTS["nvidia"], lease(), "abc123")
    [server] = FakeServer.made
    assert (server.name, server.image_name, server.reservation_id) == ("node-mlflow-abc123", "CC-Ubuntu24.04-CUDA", "res-42")
    assert server.calls[0] == ("submit", {"idempotent": True, "wait_for_active": False, "show": None})
    assert names(server) == ["submit", "wait", "associate_floating_ip", "check_connectivity"]
    assert "address 129.114.5.6" in capsys.readouterr().out


def test_the_address_it_has_is_kept(capsys):
    FakeServer.address = "129.114.9.9"
    node_server.bring_up(VARIANTS["amd"], lease(), "abc123")
    [server] = FakeServer.made
    assert "associate_floating_ip" not in names(server) and server.image_name == "CC-Ubuntu24.04-ROCm"
    assert "already has floating IP 129.114.9.9: keeping it" in capsys.readouterr().out


def test_a_server_in_error_says_what_to_do():
    FakeServer.final_status = "ERROR"
    with pytest.raises(node_server.ServerError, match="is in ERROR.*release --user abc123"):
        node_server.bring_up(VARIANTS["nvidia"], lease(), "abc123")
    assert "associate_floating_ip" not in names(FakeServer.made[0])


def test_a_lease_not_yet_active_is_refused_before_any_request():
    with pytest.raises(node_server.ServerError, match="is PENDING, not ACTIVE"):
        node_server.bring_up(VARIANTS["nvidia"], lease("PENDING"), "abc123")
    assert FakeServer.made == []


def test_the_vm_goes_on_its_flavor_and_opens_only_the_series_ports():
    rules = []

    class FakeGroup:
        def __init__(self, data):
            self.name = data["name"]

        def add_rule(self, direction, protocol, port):
            rules.append((self.name, direction, protocol, port))

        def submit(self, idempotent=False):
            assert idempotent

    with mock.patch("chi.network.SecurityGroup", FakeGroup):
        node_server.bring_up(VARIANTS["vm"], lease(flavor="reservation:abc"), "abc123")
    [server] = FakeServer.made
    assert server.flavor_name == "reservation:abc" and server.reservation_id is None
    assert sorted(port for *_, port in rules) == [22, 8000, 8888, 9000, 9001]
    assert all(direction == "ingress" and protocol == "tcp" for _, direction, protocol, _ in rules)
    assert server.groups == ["allow-22", "allow-8888", "allow-8000", "allow-9000", "allow-9001"]


def test_a_lease_of_the_wrong_kind_is_named():
    with pytest.raises(node_server.ServerError, match="reserves no flavor"):
        node_server.bring_up(VARIANTS["vm"], lease(), "abc123")
