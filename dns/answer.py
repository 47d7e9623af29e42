"""What a question means: catalog view + parsed query -> records (sans-IO, pure).

Rules that live here (Consul's DNS semantics, on our zone `mesh.`):
- `<svc>.service`, `<tag>.<svc>.service`, `_<svc>._<tag>.service` (RFC 2782;
  `_tcp` means no tag), `<svc>.connect`, `<node>.node`, `<hex-ip>.addr`.
- Each may name the datacenter after its kind label, as `<dc>` or `<dc>.dc`
  (`web.service.dc1.mesh`, `web.service.dc1.dc.mesh`); the kind label
  nearest the zone wins, as in Consul. Only the local datacenter answers:
  another is NXDOMAIN (there is no WAN federation).
- Only healthy instances: critical never, warning unless `only_passing`.
- A/AAAA by address family; SRV with priority 1, the instance's weight, its
  port and a target in the datacenter form (`<node>.node.<dc>.mesh.` or
  `<hex>.addr.<dc>.mesh.`) whose address goes in the additional section;
  TXT for node metadata; ANY is A + AAAA + SRV (services) or A + AAAA + TXT
  (nodes).
- The apex: SOA, and NS naming this agent (`<node>.node.<dc>.mesh.`) with
  its address as glue; SOA answers carry the NS in the authority section.
- A name with no healthy instance is NXDOMAIN, a name with no record of the
  asked type NOERROR with no answer (NODATA); both carry the zone's SOA.
- PTR for node and healthy instance addresses, named in the datacenter
  form; other reverse names are outside the zone.
Ordering, caching and truncation are the responder's business, not this module's.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from . import wire
from .catalog_view import DnsCatalog, DnsInstance
from .config import DnsConfig

__all__ = ["Answerer", "Reply"]

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Labels = tuple[bytes, ...]

_SRV_PRIORITY = 1  # one tier: every healthy instance is equally preferred
_KINDS = frozenset((b"service", b"connect", b"node", b"addr"))


@dataclass(slots=True)
class Reply:
    """Records for one question, in encoded form (see wire.NameEncoder)."""

    rcode: int = wire.RCODE_NOERROR
    authoritative: bool = True
    answers: list[bytes] = field(default_factory=list)
    authority: list[bytes] = field(default_factory=list)
    additional: list[bytes] = field(default_factory=list)


def _ip(text: str) -> IpAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _labels_of(name: str) -> Labels | None:
    """A catalog name as DNS labels, or None when it cannot be one."""
    try:
        labels = wire.name_labels(name)
    except UnicodeEncodeError:
        return None
    if not labels or any(len(label) > 63 for label in labels):
        return None
    return labels


def _fits(labels: Labels) -> bool:
    """Whether `labels` encode as a name within DNS's 255 bytes."""
    return len(wire.encode_name_plain(labels)) <= wire.MAX_NAME_BYTES


def _locate(rest: Labels) -> tuple[bytes, Labels, bytes | None] | None:
    """(kind, the labels before it, datacenter label or None) of a name in the zone.

    After the kind label come nothing, `<dc>` or `<dc>.dc`. Trying the last
    three labels from the right is Consul's rule that the kind label nearest
    the zone wins: `a.service.node.mesh` is the node `a.service`.
    """
    if rest and rest[-1] in _KINDS:
        return rest[-1], rest[:-1], None
    if len(rest) >= 2 and rest[-2] in _KINDS:
        return rest[-2], rest[:-2], rest[-1]
    if len(rest) >= 3 and rest[-1] == b"dc" and rest[-3] in _KINDS:
        return rest[-3], rest[:-3], rest[-2]
    return None


def _text(labels: Labels) -> str | None:
    try:
        return b".".join(labels).decode("ascii")
    except UnicodeDecodeError:
        return None


def _reverse_ip(labels: Labels) -> IpAddress | None:
    """The address a full `in-addr.arpa` / `ip6.arpa` name stands for."""
    text = _text(labels)
    if text is None:
        return None
    if labels[-2:] == (b"in-addr", b"arpa") and len(labels) == 6:
        return _ip(".".join(reversed(text.split(".")[:4])))
    if labels[-2:] == (b"ip6", b"arpa") and len(labels) == 34:
        nibbles = "".join(reversed(text.split(".")[:32]))
        if len(nibbles) == 32:
            return _ip(":".join(nibbles[i : i + 4] for i in range(0, 32, 4)))
    return None


class Answerer:
    """Answers questions from a `DnsCatalog`; holds no catalog state of its own."""

    def __init__(self, catalog: DnsCatalog, config: DnsConfig) -> None:
        self._catalog = catalog
        self._config = config
        self._dc = config.datacenter.encode("ascii")
        self._primary = wire.name_labels(config.domain)
        zones = [self._primary]
        if config.alt_domain:
            zones.append(wire.name_labels(config.alt_domain))
        # Longest first, so that `corp.mesh.` wins over `mesh.` for names in both.
        self._zones = sorted(zones, key=len, reverse=True)

    def answer(self, query: wire.Query, index: int) -> Reply | None:
        """The records for `query`, or None when the name is outside every zone."""
        labels = query.labels
        if query.qclass not in (wire.CLASS_IN, wire.CLASS_ANY):
            return Reply(rcode=wire.RCODE_REFUSED, authoritative=False)
        enc = wire.NameEncoder(labels)
        for apex in self._zones:
            if labels[len(labels) - len(apex) :] == apex:
                return self._in_zone(query, enc, labels[: len(labels) - len(apex)], apex, index)
        if query.qtype in (wire.TYPE_PTR, wire.TYPE_ANY):
            return self._ptr(query, enc)
        return None

    def _in_zone(
        self, query: wire.Query, enc: wire.NameEncoder, rest: Labels, apex: Labels, index: int
    ) -> Reply:
        soa = enc.soa(apex, index, 0)
        if query.qtype in (wire.TYPE_AXFR, wire.TYPE_IXFR):
            return Reply(rcode=wire.RCODE_REFUSED, authoritative=False)
        if not rest:
            return self._apex(query, enc, apex, soa)
        located = _locate(rest)
        reply: Reply | None = None
        if located is not None and located[2] in (None, self._dc):
            kind, parts, _ = located
            reply = self._kind(query, enc, kind, parts, apex)
        if reply is None:
            return Reply(rcode=wire.RCODE_NXDOMAIN, authority=[soa])
        if not reply.answers:
            reply.authority.append(soa)
        return reply

    def _kind(
        self, query: wire.Query, enc: wire.NameEncoder, kind: bytes, parts: Labels, apex: Labels
    ) -> Reply | None:
        """The records for `parts` under one kind label; None means NXDOMAIN."""
        if kind == b"service" and len(parts) in (1, 2):
            return self._service_form(query, enc, parts, apex)
        if kind == b"connect" and len(parts) == 1:
            name = _text(parts)
            if name is None:
                return None
            return self._instances(query, enc, self._catalog.connect_instances(name), None, apex)
        if kind == b"node" and parts:
            return self._node(query, enc, parts)
        if kind == b"addr" and len(parts) == 1:
            return self._addr(query, enc, parts[0])
        return None

    def _apex(self, query: wire.Query, enc: wire.NameEncoder, apex: Labels, soa: bytes) -> Reply:
        """The zone's own name: SOA, and NS for this agent with its address as glue."""
        qtype = query.qtype
        ns, glue = self._nameserver(enc, apex)
        if qtype == wire.TYPE_SOA:
            return Reply(answers=[soa], authority=ns, additional=glue)
        if qtype == wire.TYPE_NS and ns:
            return Reply(answers=ns, additional=glue)
        if qtype == wire.TYPE_ANY:
            return Reply(answers=[soa, *ns], additional=glue)
        return Reply(authority=[soa])

    def _nameserver(self, enc: wire.NameEncoder, apex: Labels) -> tuple[list[bytes], list[bytes]]:
        """([NS], [glue]) naming this agent, as Consul names its servers; empty when
        the agent's name or address cannot be one."""
        node_name = self._config.node_name
        node = self._catalog.node(node_name.lower()) if node_name else None
        labels = _labels_of(node_name)
        ip = None if node is None else _ip(node.address)
        if labels is None or ip is None:
            return [], []
        target = (*labels, b"node", self._dc, *apex)
        if not _fits(target):
            return [], []
        ttl_s = self._config.node_ttl_s
        return [enc.pointer(apex, wire.TYPE_NS, ttl_s, target)], [enc.address(target, ip, ttl_s)]

    def _service_form(
        self, query: wire.Query, enc: wire.NameEncoder, parts: Labels, apex: Labels
    ) -> Reply | None:
        tag: bytes | None = None
        if len(parts) == 1:
            service = parts[0]
        elif parts[0].startswith(b"_") and parts[1].startswith(b"_"):
            service, tag = parts[0][1:], parts[1][1:]
            if tag == b"tcp":
                tag = None
        else:
            tag, service = parts[0], parts[1]
        name = _text((service,))
        tag_text = None if tag is None else _text((tag,))
        if name is None or (tag is not None and tag_text is None):
            return None
        instances = self._catalog.service_instances(name)
        return self._instances(query, enc, instances, tag_text, apex)

    def _is_healthy(self, instance: DnsInstance) -> bool:
        if self._config.only_passing:
            return instance.status == "passing"
        return instance.status != "critical"

    def _healthy(self, instances: list[DnsInstance]) -> list[DnsInstance]:
        return [i for i in instances if self._is_healthy(i)]

    def _instances(
        self,
        query: wire.Query,
        enc: wire.NameEncoder,
        instances: list[DnsInstance],
        tag: str | None,
        apex: Labels,
    ) -> Reply | None:
        healthy = self._healthy(instances)
        if tag is not None:
            healthy = [i for i in healthy if tag in (t.lower() for t in i.tags)]
        if not healthy:
            return None
        qtype = query.qtype
        want_v4 = qtype in (wire.TYPE_A, wire.TYPE_ANY)
        want_v6 = qtype in (wire.TYPE_AAAA, wire.TYPE_ANY)
        want_srv = qtype in (wire.TYPE_SRV, wire.TYPE_ANY)
        reply = Reply()
        seen: set[object] = set()
        for inst in healthy:
            ttl_s = self._config.service_ttl_s if inst.ttl_s is None else inst.ttl_s
            ip = _ip(inst.address)
            if ip is not None and (want_v4 if ip.version == 4 else want_v6) and ip not in seen:
                seen.add(ip)
                reply.answers.append(enc.address(query.labels, ip, ttl_s))
            if want_srv:
                self._srv(reply, enc, query.labels, inst, ip, ttl_s, apex, seen)
        return reply

    def _srv(
        self,
        reply: Reply,
        enc: wire.NameEncoder,
        owner: Labels,
        inst: DnsInstance,
        ip: IpAddress | None,
        ttl_s: int,
        apex: Labels,
        seen: set[object],
    ) -> None:
        """One SRV record, its target's address in the additional section."""
        target: Labels | None
        if ip is None:
            target = _labels_of(inst.address)  # a host name: the client resolves it
        else:
            node = self._catalog.node(inst.node)
            node_labels = _labels_of(inst.node)
            if node is not None and node.address == inst.address and node_labels is not None:
                target = (*node_labels, b"node", self._dc, *apex)
            else:
                target = (ip.packed.hex().encode(), b"addr", self._dc, *apex)
        if target is None or not _fits(target):
            return
        weight = min(max(inst.weight, 0), 0xFFFF)
        if ("srv", target, inst.port, weight) in seen:
            return
        seen.add(("srv", target, inst.port, weight))
        reply.answers.append(enc.srv(owner, ttl_s, _SRV_PRIORITY, weight, inst.port, target))
        if ip is not None and ("additional", target) not in seen:
            seen.add(("additional", target))
            reply.additional.append(enc.address(target, ip, ttl_s))

    def _node(self, query: wire.Query, enc: wire.NameEncoder, name_labels: Labels) -> Reply | None:
        name = _text(name_labels)
        node = None if name is None else self._catalog.node(name)
        if node is None:
            return None
        ttl_s = self._config.node_ttl_s
        reply = Reply()
        ip = _ip(node.address)
        if ip is not None and query.qtype in (
            wire.TYPE_ANY,
            wire.TYPE_A if ip.version == 4 else wire.TYPE_AAAA,
        ):
            reply.answers.append(enc.address(query.labels, ip, ttl_s))
        if query.qtype in (wire.TYPE_TXT, wire.TYPE_ANY):
            for key, value in sorted(node.meta.items()):
                text = f"{key}={value}".encode()
                reply.answers.append(enc.txt(query.labels, ttl_s, text))
        return reply

    def _addr(self, query: wire.Query, enc: wire.NameEncoder, hex_label: bytes) -> Reply | None:
        if len(hex_label) not in (8, 32):
            return None
        try:
            packed = bytes.fromhex(hex_label.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            return None
        ip = ipaddress.ip_address(packed)
        reply = Reply()
        if query.qtype in (wire.TYPE_ANY, wire.TYPE_A if ip.version == 4 else wire.TYPE_AAAA):
            reply.answers.append(enc.address(query.labels, ip, self._config.node_ttl_s))
        return reply

    def _ptr(self, query: wire.Query, enc: wire.NameEncoder) -> Reply | None:
        ip = _reverse_ip(query.labels)
        if ip is None:
            return None
        targets = self._ptr_targets(str(ip))
        if not targets:
            return None
        answers = [enc.pointer(query.labels, wire.TYPE_PTR, ttl_s, t) for t, ttl_s in targets]
        return Reply(answers=answers)

    def _ptr_targets(self, ip: str) -> list[tuple[Labels, int]]:
        """The nodes at `ip`, then each service name with a healthy instance there.

        O(nodes and instances at that address): asked of the catalog's indexes,
        never by walking every service (issue 5).
        """
        suffix = (self._dc, *self._primary)
        found: list[tuple[Labels, int]] = []
        for node in sorted(self._catalog.nodes_at(ip), key=lambda n: n.name):
            labels = _labels_of(node.name)
            if labels is not None and _fits((*labels, b"node", *suffix)):
                found.append(((*labels, b"node", *suffix), self._config.node_ttl_s))
        for service, inst in sorted(self._catalog.instances_at(ip), key=lambda p: p[0]):
            labels = _labels_of(service)
            if labels is None or not self._is_healthy(inst):
                continue
            if not _fits((*labels, b"service", *suffix)):
                continue
            ttl_s = self._config.service_ttl_s if inst.ttl_s is None else inst.ttl_s
            target = ((*labels, b"service", *suffix), ttl_s)
            if target not in found:
                found.append(target)
        return found
