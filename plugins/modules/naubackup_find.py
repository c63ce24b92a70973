#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: naubackup_find
short_description: Find the newest finished NAUBackup export of a VM
version_added: "0.1.0"
description:
  - NAUBackup writes each run of a VM into a folder named backup-YYYY-MM-DD-(HH:MM:SS) under
    C(<path>/<vm>/), as C(<vm>.xva) or C(<vm>.xva.gz), and puts a C(success) file beside the XVA
    once the export is complete.
  - Returns the XVA of the newest folder that has the C(success) marker. Newest is by the
    timestamp in the folder name, not by modification time (a copied or restored tree keeps its
    order). Folders named otherwise are ignored.
  - Newer folders without the marker (a backup still running, or one that failed) are skipped
    and listed in RV(skipped).
  - Fails naming every folder it found when none is finished.
author:
  - xen2kvm developers (@xen2kvm)
extends_documentation_fragment:
  - xen2kvm.migration.attributes.read_only
requirements:
  - Python 3.11 on the target host (Debian 12's python3, the version tested)
options:
  path:
    description: The NAUBackup directory, the one that holds a folder per VM.
    type: path
    required: true
  vm:
    description: The VM's name (NAUBackup's folder and file name for it).
    type: str
    required: true
seealso:
  - module: xen2kvm.migration.xva_info
"""

EXAMPLES = r"""
- name: Find last night's export of TestVM01
  xen2kvm.migration.naubackup_find:
    path: /backup
    vm: TestVM01
  register: backup

- name: Read its VM description
  xen2kvm.migration.xva_info:
    src: "{{ backup.xva }}"
"""

RETURN = r"""
xva:
  description: The XVA (C(.xva) or C(.xva.gz)) of the newest finished backup.
  returned: success
  type: str
  sample: "/backup/TestVM01/backup-2024-05-01-(01:00:00)/TestVM01.xva"
folder:
  description: Its backup folder.
  returned: success
  type: str
  sample: "/backup/TestVM01/backup-2024-05-01-(01:00:00)"
date:
  description: The timestamp of the folder name, ISO 8601 (local time of the backup host).
  returned: success
  type: str
  sample: "2024-05-01T01:00:00"
skipped:
  description: Newer backup folders passed over, newest first.
  returned: success
  type: list
  elements: dict
  contains:
    folder:
      description: The folder.
      type: str
    reason:
      description: Why it was skipped (no C(success) marker, or no XVA).
      type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.naubackup import (
    NauBackupError, find_newest_finished)


def main():
    module = AnsibleModule(
        argument_spec=dict(path=dict(type="path", required=True), vm=dict(type="str", required=True)),
        supports_check_mode=True,
    )
    try:
        result = find_newest_finished(module.params["path"], module.params["vm"])
    except (NauBackupError, OSError) as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
