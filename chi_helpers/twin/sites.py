"""The list of sites python-chi reads (`<CHI_RESOURCE_API_URL>/sites.json`), and where each site's services answer.

Each Chameleon site is its own OpenStack with its own Keystone: a credential or token made at one is
unknown at another (401). The twin serves CHI@TACC (and CHI@UC, which shares its Keystone here) on its
own address, and KVM@TACC on a second loopback address, each with its own Keystone, catalog and
credentials (`keystone.py`). What lies behind the services (projects, leases, servers, addresses) is one
shared state: each site's services see the leases and servers of the other, which a test never relies on.

python-chi sets `auth_url` to `<web>:5000/v3` for the site it uses, so `web` is a site's address without
a port, and every service answers on port 5000 there. (python-chi replaces KVM@TACC's entry with
Chameleon's real address after reading any list: the series sets `auth_url` again after `use_site` when
a site list other than Chameleon's is in use.)
"""

from __future__ import annotations

from .web import Request, Service, reply

SITES = [("CHI@TACC", "Austin, Texas, USA"), ("CHI@UC", "Chicago, Illinois, USA"), ("KVM@TACC", "Austin, Texas, USA")]
KVM = "KVM@TACC"


def place(world, kvm_address: str) -> None:
    """Where each site answers: KVM@TACC at `kvm_address`, the others at the twin's own address."""
    world.data["site_addresses"] = {name: kvm_address if name == KVM else world.address for name, _ in SITES}


def address_of(world, site: str) -> str:
    return world.data.get("site_addresses", {}).get(site, world.address)


def sites_at(world, address: str | None = None) -> list[str]:
    """The sites whose services answer at `address` (default: where `world` serves), in the list's order."""
    address = address or world.address
    return [name for name, _ in SITES if address_of(world, name) == address]


def keystone_site(world) -> str:
    """The site whose Keystone answers where `world` serves: what its credentials and tokens belong to."""
    return sites_at(world)[0]


class SiteWorld:
    """The shared world as one site's services see it: the same state, lock and faults, but its own
    address, so that the links and catalogs its services hand out point back at that site."""

    def __init__(self, world, address: str):
        self._world, self.address = world, address

    def __getattr__(self, name):
        return getattr(self._world, name)

    def url(self, prefix: str = "") -> str:
        return f"http://{self.address}:{self._world.port}{prefix}"


class Sites(Service):
    prefix = "/api"
    name = "sites"
    routes = [("GET", "/sites.json", "list_sites")]

    def list_sites(self, request: Request):
        items = [{"name": name, "web": f"http://{address_of(self.world, name)}",
                  "site_class": "kvm" if name.startswith("KVM") else "bare-metal",
                  "location": where, "user_support_contact": "help@chameleoncloud.org"} for name, where in SITES]
        return reply(200, {"items": items})


def services(world) -> list[Service]:
    return [Sites(world)]
