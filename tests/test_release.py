"""Releasing everything, at python-chi's nova, neutron and Blazar clients: twice, and with parts gone."""

from __future__ import annotations

import json
from unittest import mock

import pytest

from chi_helpers import parameters
from chi_helpers.chameleon import release


class Cloud:
    """Fake nova/neutron/Blazar holding one server with a floating IP, and one lease."""

    def __init__(self):
        server = mock.Mock(id="srv-1", addresses={"sharednet1": [
            {"addr": "10.52.0.5", "OS-EXT-IPS:type": "fixed"},
            {"addr": "129.114.1.2", "OS-EXT-IPS:type": "floating"},
        ]})
        server.name = "node-mlflow-abc123"
        self.servers = [server]
        self.fips = [{"id": "fip-1", "floating_ip_address": "129.114.1.2"}]
        self.leases = {"mlflow_abc123": {
            "id": "lease-1", "name": "mlflow_abc123", "status": "ACTIVE", "user_id": "u", "project_id": "p",
            "created_at": "2026-11-24 14:32:00", "start_date": "2026-11-24T15:00:00.000000",
            "end_date": "2026-11-24T17:50:00.000000",
            "reservations": [{"id": "r", "resource_type": "physical:host",
                              "resource_properties": json.dumps(["==", "$node_name", "liqid01"])}],
        }}
        self.nova, self.neutron, self.blazar = mock.MagicMock(), mock.MagicMock(), mock.MagicMock()
        self.nova.servers.list.side_effect = lambda: list(self.servers)
        self.nova.servers.delete.side_effect = lambda sid: self.servers.remove(next(s for s in self.servers if s.id == sid))
        self.neutron.list_floatingips.side_effect = lambda: {"floatingips": list(self.fips)}
        self.neutron.delete_floatingip.side_effect = lambda fid: self.fips.remove(next(f for f in self.fips if f["id"] == fid))

        from blazarclient.exception import BlazarClientException

        def get(ref):
            for lease in self.leases.values():
                if ref in (lease["id"], lease["name"]):
                    return lease
            raise BlazarClientException("not found", code=404)

        self.blazar.lease.get.side_effect = get
        self.blazar.lease.list.side_effect = lambda: list(self.leases.values())
        self.blazar.lease.delete.side_effect = lambda lid: self.leases.pop(next(n for n, l in self.leases.items() if l["id"] == lid))


@pytest.fixture
def cloud():
    fake = Cloud()
    with mock.patch("chi.server.nova", return_value=fake.nova), \
         mock.patch("chi.network.neutron", return_value=fake.neutron), \
         mock.patch("chi.lease.blazar", return_value=fake.blazar), \
         mock.patch.object(release, "_ssh_run") as ssh:
        fake.ssh = ssh
        yield fake


def test_release_stops_deletes_releases_and_ends(cloud):
    outcome = release.release("mlflow_abc123", "abc123", say=lambda _: None)
    assert [c.args for c in cloud.ssh.call_args_list] == [
        ("129.114.1.2", "docker stop jupyter || true"),
        ("129.114.1.2", "docker compose --env-file ~/mlflow-stack.env -f ~/mlflow-chi/docker/compose-tracking.yaml down"),
    ]
    cloud.nova.servers.delete.assert_called_once_with("srv-1")
    cloud.neutron.delete_floatingip.assert_called_once_with("fip-1")
    cloud.blazar.lease.delete.assert_called_once_with("lease-1")
    assert outcome == {
        "stack": "stopped the containers on 129.114.1.2",
        "server": "deleted server node-mlflow-abc123",
        "floating_ip": "released 129.114.1.2",
        "lease": "ended lease mlflow_abc123",
    }


def test_release_twice_finds_everything_gone(cloud):
    release.release("mlflow_abc123", "abc123", say=lambda _: None)
    lines = []
    outcome = release.release("mlflow_abc123", "abc123", say=lines.append)
    assert cloud.nova.servers.delete.call_count == 1 and cloud.blazar.lease.delete.call_count == 1
    assert outcome["server"] == "no server named node-mlflow-abc123: nothing to delete"
    assert outcome["lease"] == "no lease named mlflow_abc123: nothing to end"
    assert len(lines) == len(outcome)


def test_release_with_some_parts_already_gone(cloud):
    cloud.fips.clear()  # the address was released by hand
    cloud.ssh.side_effect = TimeoutError("timed out")  # and the node no longer answers
    outcome = release.release("mlflow_abc123", "abc123", say=lambda _: None)
    assert outcome["floating_ip"] == "129.114.1.2 was already released"
    assert outcome["stack"].startswith("could not stop the containers (TimeoutError")
    assert outcome["server"] == "deleted server node-mlflow-abc123" and outcome["lease"] == "ended lease mlflow_abc123"


def test_release_leaves_other_peoples_servers(cloud):
    other = mock.Mock(id="srv-2", addresses={})
    other.name = "node-mlflow-someone"
    cloud.servers.append(other)
    release.release("mlflow_abc123", "abc123", say=lambda _: None)
    assert cloud.servers == [other]


def test_bad_names_are_refused_before_any_call(cloud):
    with pytest.raises(parameters.ParameterError, match="lease_name is empty"):
        release.release("", "abc123")
    assert cloud.nova.mock_calls == [] and cloud.blazar.mock_calls == []


def test_cli_refuses_an_empty_lease_name_before_any_call():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "chi_helpers", "release", "--lease-name", "", "--user", "abc123"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "lease_name is empty" in done.stderr
