# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A XenServer / XCP-ng pool as a live source, through the XenAPI SDK: the session
(session.py), finding a VM (lookup.py), its spec from the records (spec.py), preparing and
releasing an export (export.py), the migration mark (marks.py) and power (power.py)."""
