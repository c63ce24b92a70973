# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    """Options of every module that reads an XVA from a path, a pipe or an HTTP(S) URL."""

    DOCUMENTATION = r"""
options:
  src:
    description:
      - The XVA. A path on the target host, C(-) for standard input, a FIFO (for example fed by
        C(xe vm-export filename= ...)), an C(http://) or C(https://) URL such as XAPI's
        C(/export?uuid=...), or a file on another host read over SSH, as
        C(ssh://[user@]host[:port]/absolute/path) or C([user@]host:/absolute/path). Plain, gzip
        and zstd streams are recognised by their magic bytes.
      - The C([user@]host:/path) spelling is taken for a remote file only when the part before
        the colon looks like a host name or address, the part after it is an absolute path, and
        no local file of that name exists; C(ssh://) is never ambiguous. The path in an
        C(ssh://) URL is percent-decoded.
      - An SSH source runs the system C(ssh) client on the target host in batch mode (never
        a password or passphrase prompt, so a key, O(ssh_private_key) or an agent is needed, and
        the remote host key must be in known_hosts unless O(ssh_options) says otherwise) as
        C(ssh -- host cat -- PATH); nothing is copied to the target host. Closing early or
        failing kills and reaps ssh.
      - C(xe+ssh://[user@]host[:port]/?uuid=UUID&compress=zstd|gzip|none) (what
        M(xen2kvm.migration.xen_vm_export) returns with C(transport=ssh)) runs
        C(xe vm-export uuid=UUID filename= compress=...) on the Xen host the same way and reads the
        export from xe's standard output (C(&xe=/path/to/xe) when xe is not on the PATH).
      - Redirects are followed and no Content-Length is needed.
      - A password in the URL (C(https://user:pass@host/...)) and the values of C(session_id) and
        other credential-like query parameters are masked in the module result (also in
        C(invocation)), warnings, messages, the status file and the manifest, where the URL
        appears without them. Passing them as O(url_password) or O(session_id) is still clearer.
    type: str
    required: true
  validate_certs:
    description:
      - Verify the server's TLS certificate when O(src) is an C(https://) URL.
      - To trust a host with a self-signed certificate (XCP-ng's default), give its certificate
        or CA in O(ca_path) rather than turning this off.
    type: bool
    default: true
  ca_path:
    description:
      - A PEM file of CA certificates to verify an C(https://) O(src) against, instead of the
        system's trust store. For an XCP-ng or XenServer host with its self-signed certificate,
        copy C(/etc/xensource/xapi-ssl.pem)'s certificate part (or the pool's CA) here.
    type: path
  url_username:
    description: User for HTTP basic authentication.
    type: str
  url_password:
    description: Password for HTTP basic authentication.
    type: str
  session_id:
    description:
      - An XAPI session reference (C(OpaqueRef:...)), added to the URL as the C(session_id) parameter.
    type: str
  timeout:
    description:
      - Seconds to wait for the HTTP server to answer, and then for each piece of data. When no
        byte arrives for that long the module fails with "no data from HOST for N s".
      - The default is long because a compressed export can be silent for minutes. xapi sends a
        keep-alive after 5 s without data, but C(gzip) and C(zstd) on the host hold those back
        until they have a block's worth of input, so a long run of zeros in a large sparse disk
        gives minutes (gzip) to hours (zstd) of silence. For an uncompressed export a few
        minutes is enough. See the collection's docs/sources.md.
      - For an SSH source it is ssh's connect timeout (at most 30 s) and how long a connection may
        go without answering keep-alives.
    type: int
    default: 1800
  ssh_options:
    description:
      - Extra options for C(ssh -o) when O(src) is an SSH source, for example
        C(StrictHostKeyChecking=yes) or C(UserKnownHostsFile=/etc/xen2kvm/known_hosts).
      - Always set are C(BatchMode=yes), C(ConnectTimeout) (O(timeout), at most 30 s) and
        keep-alives that give up after O(timeout) seconds without an answer.
    type: list
    elements: str
  ssh_private_key:
    description:
      - A private key file on the target host for an SSH source (C(ssh -i), with
        C(IdentitiesOnly=yes)). Only the path appears in commands and messages.
    type: path
"""
