#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: migration_report
short_description: Write the migration report (Markdown and JSON) of a run of migrate.yml
version_added: "0.1.0"
description:
  - Writes C(migration-report.json) and C(migration-report.md) in O(dir), one entry per VM
    (source, KVM host, disks and their sizes, seconds per stage, conversion speed, fixups applied,
    seconds to login, status, failed stage and error; for a VM exported live from a pool also the
    pool, the export mode, the export speed and the rollback's outcome).
  - A rerun merges by VM name; VMs not in O(records) keep their entry from the earlier report.
  - Each file is written to a temporary file beside it and renamed over it, so a reader sees the
    old report or the new one, never half of one.
  - An existing C(migration-report.json) that is not such a report is refused, not overwritten.
author:
  - xen2kvm developers (@xen2kvm)
attributes:
  check_mode:
    support: full
    description: In check mode nothing is written; the entries are returned as they would be.
  diff_mode:
    support: none
    description: No diff is returned.
requirements:
  - Python 3.11 (Debian 12's python3, the version tested)
options:
  dir:
    description: The directory of the report; made when missing.
    type: path
    required: true
  records:
    description:
      - One record per VM of this run, as playbooks/migrate.yml builds them.
      - Keys C(vm) and C(status) (C(migrated), C(unchanged) or C(failed)) are required; the
        others are C(source), C(kvm_host), C(domain), C(domain_type), C(stage_seconds) (stage
        name to seconds), C(disks) (as M(xen2kvm.migration.xva_convert) returns them),
        C(converted) (whether this run converted), C(fixups) (names), C(login_seconds),
        C(boot_method), C(failed_stage) and C(error).
      - For a live source also C(source_pool) (the pool's host in the inventory group
        C(xen_hosts)), C(export_mode) (C(snapshot), C(shutdown) or C(halted)) and C(rollback)
        (what was done for a source that C(shutdown) mode stopped when its migration failed). The
        entry's C(export_mb_per_s) is the disks' MiB over the seconds of the stage C(convert)
        (the export and the conversion are one stream), when this run converted.
    type: list
    elements: dict
    required: true
seealso:
  - module: xen2kvm.migration.xva_convert
"""

EXAMPLES = r"""
- name: Write the report of the VMs of this run
  xen2kvm.migration.migration_report:
    dir: /var/log/xen2kvm
    records:
      - vm: TestVM01
        status: migrated
        kvm_host: kvm1
        source: /backup/TestVM01/TestVM01.xva
        stage_seconds: {convert: 42.0, fixup: 20.5, kvm_import: 35.1}
"""

RETURN = r"""
json:
  description: The JSON report.
  returned: always
  type: str
  sample: /root/migration-reports/migration-report.json
markdown:
  description: The Markdown report.
  returned: always
  type: str
  sample: /root/migration-reports/migration-report.md
records:
  description: The entries of this run's VMs as written.
  returned: always
  type: list
  elements: dict
vms:
  description: Every entry of the report after the merge, sorted by VM name.
  returned: always
  type: list
  elements: dict
summary:
  description: How many VMs of this run were migrated, unchanged and failed.
  returned: always
  type: str
  sample: 2 migrated, 0 unchanged, 1 failed
"""

import datetime
import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.xen2kvm.migration.plugins.module_utils._report.report import (
    JSON_NAME, MARKDOWN_NAME, ReportError, merge, normalize_record, read_report, summary, write_report)


def planned(directory, records, now):
    entries = [normalize_record(record, now) for record in records]
    json_path = os.path.join(directory, JSON_NAME)
    return {"json": json_path, "markdown": os.path.join(directory, MARKDOWN_NAME), "records": entries,
            "vms": merge(read_report(json_path), entries), "summary": summary(entries), "changed": True}


def main():
    module = AnsibleModule(
        argument_spec=dict(
            dir=dict(type="path", required=True),
            records=dict(type="list", elements="dict", required=True),
        ),
        supports_check_mode=True,
    )
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
    try:
        if module.check_mode:
            result = planned(module.params["dir"], module.params["records"], now)
        else:
            result = write_report(module.params["dir"], module.params["records"], now)
    except ReportError as exc:
        module.fail_json(msg="migration_report: %s" % exc)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
