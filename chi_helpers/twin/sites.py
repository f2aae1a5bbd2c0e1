"""The list of sites python-chi reads (`<CHI_RESOURCE_API_URL>/sites.json`), every one naming the twin.

python-chi sets `auth_url` to `<web>:5000/v3` for the site it uses, so `web` is the twin's own
address without a port, and Keystone answers on port 5000 there. (python-chi replaces KVM@TACC's
entry with Chameleon's real address after reading any list: the series sets `auth_url` again after
`use_site` when a site list other than Chameleon's is in use.)
"""

from __future__ import annotations

from .web import Request, Service, reply

SITES = [("CHI@TACC", "Austin, Texas, USA"), ("CHI@UC", "Chicago, Illinois, USA"), ("KVM@TACC", "Austin, Texas, USA")]


class Sites(Service):
    prefix = "/api"
    name = "sites"
    routes = [("GET", "/sites.json", "list_sites")]

    def list_sites(self, request: Request):
        web = f"http://{self.world.address}"
        items = [{"name": name, "web": web, "site_class": "kvm" if name.startswith("KVM") else "bare-metal",
                  "location": where, "user_support_contact": "help@chameleoncloud.org"} for name, where in SITES]
        return reply(200, {"items": items})


def services(world) -> list[Service]:
    return [Sites(world)]
