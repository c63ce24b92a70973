# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The mark a migrated source VM carries in XAPI, so nobody starts it by mistake and a rerun
knows: other_config ``xen2kvm_migrated_to`` = ``<kvm_host>/<domain>`` and
``xen2kvm_migrated_at`` (UTC, ISO 8601), and the tag ``xen2kvm-migrated-to:<kvm_host>/<domain>``
(tags show in XenCenter and Xen Orchestra, other_config does not)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

MARK_TO = "xen2kvm_migrated_to"
MARK_AT = "xen2kvm_migrated_at"
TAG_PREFIX = "xen2kvm-migrated-to:"


def _mark_tags(record):
    return [tag for tag in (record.get("tags") or []) if tag.startswith(TAG_PREFIX)]


def read_mark(record):
    """The mark as a dict (kvm_host, domain, migrated_to, migrated_at, tag), or {} when the VM
    carries none."""
    other_config = record.get("other_config") or {}
    target = other_config.get(MARK_TO)
    if not target:
        tags = _mark_tags(record)
        if not tags:
            return {}
        target = tags[0][len(TAG_PREFIX):]
    kvm_host, _sep, domain = target.partition("/")
    return {"kvm_host": kvm_host, "domain": domain, "migrated_to": target,
            "migrated_at": other_config.get(MARK_AT, ""), "tag": TAG_PREFIX + target}


def mark_view(record):
    """The part of a record the mark is made of: what diff mode shows."""
    other_config = record.get("other_config") or {}
    return {"other_config": {key: other_config[key] for key in (MARK_TO, MARK_AT) if key in other_config},
            "tags": _mark_tags(record)}


def plan_mark(record, state, kvm_host=None, domain=None, now=None):
    """The XAPI calls that bring the mark of ``record`` to ``state`` (present|absent), and the
    mark before and after: ``{"calls": [(method, args)], "before", "after"}``.  No call means
    nothing to change; a present mark naming the same target keeps its time."""
    before = mark_view(record)
    calls = []
    other_config = before["other_config"]
    if state == "present":
        target = "%s/%s" % (kvm_host, domain)
        tag = TAG_PREFIX + target
        after = {"other_config": {MARK_TO: target, MARK_AT: other_config.get(MARK_AT) or now}, "tags": [tag]}
        if other_config.get(MARK_TO) != target or not other_config.get(MARK_AT):
            after["other_config"][MARK_AT] = now
            for key in (MARK_TO, MARK_AT):
                if key in other_config:  # add_to_other_config refuses a key that exists
                    calls.append(("VM.remove_from_other_config", (key,)))
            calls.append(("VM.add_to_other_config", (MARK_TO, target)))
            calls.append(("VM.add_to_other_config", (MARK_AT, now)))
        calls.extend(("VM.remove_tags", (old,)) for old in before["tags"] if old != tag)
        if tag not in before["tags"]:
            calls.append(("VM.add_tags", (tag,)))
    else:
        after = {"other_config": {}, "tags": []}
        calls.extend(("VM.remove_from_other_config", (key,)) for key in (MARK_TO, MARK_AT) if key in other_config)
        calls.extend(("VM.remove_tags", (tag,)) for tag in before["tags"])
    return {"calls": calls, "before": before, "after": after}


def apply_mark(client, vm_ref, plan):
    for method, args in plan["calls"]:
        client.call(method, vm_ref, *args)


def marked_record(record, plan):
    """``record`` as it will be once ``plan`` is applied (what check mode reports)."""
    other_config = {k: v for k, v in (record.get("other_config") or {}).items() if k not in (MARK_TO, MARK_AT)}
    other_config.update(plan["after"]["other_config"])
    tags = [tag for tag in record.get("tags") or [] if not tag.startswith(TAG_PREFIX)] + plan["after"]["tags"]
    return dict(record, other_config=other_config, tags=tags)
