# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Netplan files (Ubuntu-style guests) for the virtio NIC: Xen names out, DHCP when asked.

Xen's netfront is ``eth<n>`` on old kernels and ``enX<n>`` on new ones; on KVM the virtio NICs
are ``eth<n>`` (``net.ifnames=0``, set by the console step).  A stanza named ``enX0`` would never
come up, so it becomes ``eth0``, with every reference to it (bond and bridge members, VLAN
links, ``match: name:``).  A stanza that matches its NIC by MAC address stays valid (the domain
keeps the Xen MAC) and is left as it is.

Netplan files are edited textually when only names change, so their comments and layout
survive; they are rebuilt from the parsed YAML only when a static address becomes DHCP.  The
file's ``renderer`` (networkd or NetworkManager) is never changed nor added.

Guest files are untrusted: YAML aliases (which can make a small file expand without bound) and
oversized files are refused with a warning, and every scalar is read as the string netplan
itself sees, so a MAC such as ``52:54:00:12:34:56`` is never turned into a number.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress
import re

try:
    import yaml
    HAS_YAML = True
except ImportError:
    yaml = None
    HAS_YAML = False

# A netplan file is a few hundred bytes; anything this large is not one we should rewrite.
MAX_NETPLAN_BYTES = 1024 * 1024
_XEN_NAME = re.compile(r"^enX(\d+)$")
_XEN_GLOB = "enX*"
# Device types whose stanzas may carry a static IPv4 address (DHCP when asked).
ADDRESSED_SECTIONS = ("ethernets", "bonds", "bridges", "vlans")
# Xen netfront's driver name as ``match: driver:`` sees it; no KVM NIC has it.
XEN_DRIVERS = ("vif", "xen_netfront", "xen-netfront")
NM_STATIC_IPV4_KEYS = ("ipv4.address", "ipv4.gateway", "ipv4.dns", "ipv4.route", "ipv4.method")
NULL_TAG = "tag:yaml.org,2002:null"
INT_TAG = "tag:yaml.org,2002:int"
FLOAT_TAG = "tag:yaml.org,2002:float"


def require_yaml():
    """Netplan files cannot be edited safely without a YAML parser: say which package to add."""
    if not HAS_YAML:
        raise RuntimeError("the guest's netplan files need PyYAML on the host running guest_fixup "
                           "(Debian: python3-yaml); nothing was changed in them")


if HAS_YAML:
    class NetplanLoader(yaml.SafeLoader):  # pylint: disable=too-many-ancestors
        """Scalars stay strings, as netplan reads them; only empty values and ``null`` are None."""

    class NetplanDumper(yaml.SafeDumper):  # pylint: disable=too-many-ancestors
        """Writes ``true``, ``2`` and names plain, as netplan reads them, and quotes what a YAML 1.1
        reader would take for a number other than a decimal (a MAC like ``52:54:00:12:34:56``)."""

    def _resolvers(resolvers, keep):
        return {first: [(tag, regexp) for tag, regexp in entries if tag in keep]
                for first, entries in resolvers.items()}

    NetplanLoader.yaml_implicit_resolvers = _resolvers(yaml.SafeLoader.yaml_implicit_resolvers, (NULL_TAG,))
    NetplanDumper.yaml_implicit_resolvers = _resolvers(yaml.SafeDumper.yaml_implicit_resolvers,
                                                       (NULL_TAG, FLOAT_TAG, "tag:yaml.org,2002:timestamp"))
    NetplanDumper.add_implicit_resolver(INT_TAG, re.compile(r"""^(?:[-+]?0b[0-1_]+
                    |[-+]?0[0-7_]+
                    |[-+]?0x[0-9a-fA-F_]+
                    |[-+]?[1-9][0-9]*_[0-9_]*
                    |[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+)$""", re.X), list("-+0123456789"))


class NetplanUnreadable(ValueError):
    """A netplan file this fixup will not rewrite (the reason is the message)."""


def parse(text):
    """The netplan document, or NetplanUnreadable naming why it cannot be edited."""
    if len(text) > MAX_NETPLAN_BYTES:
        raise NetplanUnreadable("larger than %d bytes, not a netplan file we rewrite" % MAX_NETPLAN_BYTES)
    try:
        for event in yaml.parse(text, Loader=NetplanLoader):
            if isinstance(event, yaml.AliasEvent):
                raise NetplanUnreadable("uses YAML aliases, which this fixup does not expand")
        return yaml.load(text, Loader=NetplanLoader)  # NetplanLoader is a SafeLoader: no objects
    except yaml.YAMLError as exc:
        raise NetplanUnreadable("not valid YAML (%s)" % _yaml_problem(exc))
    except RecursionError:
        raise NetplanUnreadable("nested too deeply to be a netplan file")


def _yaml_problem(exc):
    """PyYAML's problem and line, without the quoted snippet of an untrusted file."""
    words = [getattr(exc, "context", None), getattr(exc, "problem", None)]
    problem = " ".join(w for w in words if w) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    return "%s, line %d" % (problem, mark.line + 1) if mark is not None else problem


def _mapping(value):
    return value if isinstance(value, dict) else {}


def _list(value):
    return value if isinstance(value, list) else []


def _matches_by_mac(stanza):
    return bool(_mapping(_mapping(stanza).get("match")).get("macaddress"))


def _xen_to_kvm(name):
    match = _XEN_NAME.match(name) if isinstance(name, str) else None
    if match:
        return "eth" + match.group(1)
    return "eth*" if name == _XEN_GLOB else None


def xen_name_map(network):
    """``{Xen name: KVM name}`` for the NIC names of ``network`` (the document's ``network:``)
    that change on KVM, and the warnings about stanzas left as they are."""
    ethernets = _mapping(network.get("ethernets"))
    names, warnings = {}, []
    for key, stanza in ethernets.items():
        match = _mapping(_mapping(stanza).get("match"))
        if _matches_by_mac(stanza):
            if _xen_to_kvm(match.get("name")):
                warnings.append("ethernets %s matches its MAC and the Xen name %s, which the virtio NIC "
                                "does not have; left as it is" % (key, match.get("name")))
            continue
        if match.get("driver") in XEN_DRIVERS:
            warnings.append("ethernets %s matches the Xen driver %s, which no KVM NIC has; left as it is"
                            % (key, match.get("driver")))
        for old in (key if not match else None, match.get("name")):
            new = _xen_to_kvm(old)
            if new is None:
                continue
            if new in ethernets:
                warnings.append("ethernets %s would become %s, which the file already has; left as it is"
                                % (old, new))
                continue
            names[old] = new
    return names, warnings


def rename_scalars(node, names):
    """A copy of ``node`` with every key and string equal to a name of ``names`` renamed."""
    if isinstance(node, dict):
        return {names.get(k, k) if isinstance(k, str) else k: rename_scalars(v, names) for k, v in node.items()}
    if isinstance(node, list):
        return [rename_scalars(item, names) for item in node]
    return names.get(node, node) if isinstance(node, str) else node


def renamed_document(doc, names):
    """The document as it must read after the rename: MAC-matched stanzas untouched."""
    network = doc["network"]
    result = dict(doc)
    result["network"] = {}
    for section, value in network.items():
        if section != "ethernets" or not isinstance(value, dict):
            result["network"][section] = rename_scalars(value, names)
            continue
        result["network"][section] = dict(_renamed_stanza(key, stanza, names) for key, stanza in value.items())
    return result


def _renamed_stanza(key, stanza, names):
    if _matches_by_mac(stanza):
        return key, stanza
    return names.get(key, key), rename_scalars(stanza, names)


def rename_text(text, names):
    """Rename whole tokens only: ``enX0`` but not ``enX0.100`` nor ``netplan-enX0``."""
    if not names:
        return text
    pattern = re.compile(r"(?<![\w.*-])(%s)(?![\w.*-])" % "|".join(
        re.escape(old) for old in sorted(names, key=len, reverse=True)))
    return pattern.sub(lambda m: names[m.group(1)], text)


def _ip_version(text):
    try:
        return ipaddress.ip_interface(str(text)).version
    except ValueError:
        return None


def _address_of(entry):
    # netplan allows "- 192.0.2.10/24" and "- 192.0.2.10/24: {label: ...}"
    if isinstance(entry, dict) and len(entry) == 1:
        return next(iter(entry))
    return entry


def _route_is_ipv4(route):
    route = _mapping(route)
    to, via = route.get("to"), route.get("via")
    if to == "default":
        return _ip_version(via) != 6
    return _ip_version(to) == 4 or _ip_version(via) == 4


def has_static_ipv4(stanza):
    stanza = _mapping(stanza)
    return "gateway4" in stanza or any(_ip_version(_address_of(a)) == 4 for a in _list(stanza.get("addresses")))


def dhcp_stanza(stanza):
    """``stanza`` on DHCPv4: its IPv4 addresses, gateway, routes and name servers go (DHCP gives
    them); IPv6 settings stay.  ``dhcp4`` takes the place of ``addresses``."""
    ipv6 = [a for a in _list(stanza.get("addresses")) if _ip_version(_address_of(a)) != 4]
    routes = [r for r in _list(stanza.get("routes")) if not _route_is_ipv4(r)]
    nameservers = _mapping(stanza.get("nameservers"))
    kept_servers = [a for a in _list(nameservers.get("addresses")) if _ip_version(a) == 6]
    out = {}
    for key, value in stanza.items():
        if key in ("addresses", "routes", "gateway4", "nameservers", "dhcp4"):
            if "dhcp4" not in out:
                out["dhcp4"] = "true"
            if key == "addresses" and ipv6:
                out[key] = ipv6
            elif key == "routes" and routes:
                out[key] = routes
            elif key == "nameservers" and ipv6 and kept_servers:
                out[key] = dict(nameservers, addresses=kept_servers)
            continue
        out[key] = value
    out.setdefault("dhcp4", "true")
    if isinstance(_mapping(out.get("networkmanager")).get("passthrough"), dict):
        out["networkmanager"] = _without_static_ipv4_passthrough(out["networkmanager"])
    return out


def _without_static_ipv4_passthrough(settings):
    """NetworkManager's netplan export repeats some IPv4 settings as raw keyfile values
    (``ipv4.address1: 192.0.2.20/24,192.0.2.1``); they would bring the static address back."""
    passthrough = {key: value for key, value in settings["passthrough"].items()
                   if not str(key).startswith(NM_STATIC_IPV4_KEYS)}
    settings = dict(settings, passthrough=passthrough)
    if not passthrough:
        del settings["passthrough"]
    return settings


def dhcp_document(doc):
    """``doc`` with every static IPv4 stanza on DHCP; None when none had a static address."""
    network = doc["network"]
    changed = False
    result = dict(doc, network=dict(network))
    for section in ADDRESSED_SECTIONS:
        stanzas = network.get(section)
        if not isinstance(stanzas, dict):
            continue
        fixed = {key: dhcp_stanza(s) if has_static_ipv4(s) else s for key, s in stanzas.items()}
        if fixed != stanzas:
            result["network"][section] = fixed
            changed = True
    return result if changed else None


def _leading_comments(text):
    lines = []
    for line in text.splitlines(True):
        if line.strip() and not line.lstrip().startswith("#"):
            break
        lines.append(line)
    return "".join(lines)


def _indent_of(text):
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#") and line[0] == " ":
            return min(max(len(line) - len(line.lstrip(" ")), 2), 9)
    return 2


def dump(doc, original):
    """``doc`` as YAML in the original's indentation, after its leading comment block."""
    comments = _leading_comments(original)
    if comments and not comments.endswith("\n"):
        comments += "\n"
    start = original[len(comments):].startswith("---")
    return comments + yaml.dump(doc, Dumper=NetplanDumper, default_flow_style=False, sort_keys=False,
                                indent=_indent_of(original), width=4096, allow_unicode=True,
                                explicit_start=start)


def fix_netplan(text, dhcp=False):
    """One netplan file fixed for the virtio NICs: ``(new text, warnings)``.  Only names change
    textually; the file is rebuilt only when a static address becomes DHCP."""
    require_yaml()
    try:
        doc = parse(text)
    except NetplanUnreadable as exc:
        return text, ["%s; left as it is" % exc]
    if doc is None:
        return text, []
    if not isinstance(doc, dict) or not isinstance(doc.get("network"), dict):
        return text, ["no network: mapping; left as it is"]
    names, warnings = xen_name_map(doc["network"])
    wanted = renamed_document(doc, names)
    on_dhcp = dhcp_document(wanted) if dhcp else None
    if on_dhcp is not None:
        return dump(on_dhcp, text), warnings
    if not names:
        return text, warnings
    renamed = rename_text(text, names)
    try:
        if parse(renamed) == wanted:
            return renamed, warnings
    except NetplanUnreadable:
        pass
    # A name also appears where it must stay (a MAC-matched stanza): rebuild from the document.
    return dump(wanted, text), warnings


def apply(guest, paths, network="keep"):
    """Fix the netplan files ``paths`` (guest paths) of ``guest``."""
    if paths:
        require_yaml()
    dhcp = network == "dhcp"
    for path in paths:
        text = guest.read(path)
        if text is None:
            continue
        new, warnings = fix_netplan(text, dhcp)
        for warning in warnings:
            guest.warn("%s: %s" % (path, warning))
        guest.write(path, new, "Xen NIC names -> eth<n> for virtio (net.ifnames=0)" +
                    (", static IPv4 -> DHCP as asked" if dhcp else ""))
