"""The collection's shape: galaxy.yml, meta/runtime.yml, module docs, role argument specs.

These run in a second and catch, before the slower ``ansible-test sanity``, what would make the
collection unbuildable or a module undocumented.
"""
import ast
import json
import os
import re
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version

import ansible.release

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "xen2kvm"
NAME = "migration"
FQCN = f"{NAMESPACE}.{NAME}"

GALAXY_NAME_RE = re.compile(r"^(?!_)[a-z0-9_]{2,64}$")
SEMVER_RE = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$"
)
DOC_VARS = ("DOCUMENTATION", "EXAMPLES", "RETURN")

MODULES = sorted(p for p in (REPO / "plugins" / "modules").glob("*.py") if p.name != "__init__.py")
ROLES = sorted(p for p in (REPO / "roles").glob("*") if p.is_dir() and not p.name.startswith("."))


def _load_yaml(path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="module", name="galaxy")
def galaxy_fixture():
    return _load_yaml(REPO / "galaxy.yml")


@pytest.fixture(scope="module", name="runtime")
def runtime_fixture():
    return _load_yaml(REPO / "meta" / "runtime.yml")


# ---------------------------------------------------------------------------------- galaxy.yml

def test_galaxy_identity(galaxy):
    assert galaxy["namespace"] == NAMESPACE
    assert galaxy["name"] == NAME
    for key in ("namespace", "name"):
        assert GALAXY_NAME_RE.match(galaxy[key]), f"galaxy.yml {key}={galaxy[key]!r} is not a valid Galaxy name"


def test_galaxy_required_fields(galaxy):
    for key in ("version", "readme", "authors", "description"):
        assert galaxy.get(key), f"galaxy.yml: {key} is missing or empty"
    assert isinstance(galaxy["authors"], list) and all(isinstance(a, str) for a in galaxy["authors"])
    assert SEMVER_RE.match(str(galaxy["version"])), f"version {galaxy['version']!r} is not semantic versioning"
    assert (REPO / galaxy["readme"]).is_file(), f"readme {galaxy['readme']!r} does not exist"
    assert isinstance(galaxy.get("dependencies") or {}, dict)


def test_galaxy_tags(galaxy):
    tags = galaxy.get("tags") or []
    assert isinstance(tags, list) and len(tags) <= 20
    for tag in tags:
        assert re.match(r"^[a-z0-9_]+$", str(tag)), f"tag {tag!r}: Galaxy tags are lowercase letters, digits and _"


def test_galaxy_license_is_the_gpl3_text(galaxy):
    assert galaxy.get("license_file") == "COPYING" and not galaxy.get("license"), \
        "galaxy.yml: license_file: COPYING (mutually exclusive with license)"
    text = (REPO / "COPYING").read_text(encoding="utf-8")
    debian_copy = Path("/usr/share/common-licenses/GPL-3")
    if debian_copy.is_file():
        assert text == debian_copy.read_text(encoding="utf-8"), "COPYING is not the verbatim GPL-3.0 text"
    assert text.split()[:7] == ["GNU", "GENERAL", "PUBLIC", "LICENSE", "Version", "3,", "29"]
    assert "END OF TERMS AND CONDITIONS" in text


# Reserved for documentation and tests (RFC 2606, RFC 6761): an address there reaches nobody.
PLACEHOLDER_HOST_RE = re.compile(
    r"^(?:.*\.)?(?:example\.(?:com|net|org)|[^.]+\.(?:invalid|example|test|localhost)|invalid|example|localhost)$")
URL_RE = re.compile(r"https?://([^/\s\"'`<>)\]]+)")


def _shipped_text_files():
    """The files users read, and the code that writes what they keep (module_utils: e.g. the
    domain metadata namespace): example values in module EXAMPLES are not links."""
    yield from (REPO / name for name in ("galaxy.yml", "README.md", "CHANGELOG.md") if (REPO / name).is_file())
    for folder in ("docs", "meta", "roles", "changelogs", "plugins/module_utils", "playbooks"):
        yield from sorted(p for p in (REPO / folder).rglob("*")
                          if p.is_file() and p.suffix in (".md", ".yml", ".yaml", ".py"))


def test_no_placeholder_urls(galaxy):
    for key in ("repository", "documentation", "homepage", "issues"):
        if galaxy.get(key):
            host = URL_RE.match(galaxy[key])
            assert host and not PLACEHOLDER_HOST_RE.match(host.group(1).split(":")[0].lower()), \
                f"galaxy.yml {key}: {galaxy[key]!r} is a placeholder"
    found = []
    for path in _shipped_text_files():
        text = path.read_text(encoding="utf-8")
        for match in URL_RE.finditer(text):
            if PLACEHOLDER_HOST_RE.match(match.group(1).split(":")[0].lower()):
                found.append(f"{path.relative_to(REPO)}: {match.group(0)}")
    assert not found, f"placeholder URLs: {found}"


def test_placeholder_pattern_catches_placeholders():
    for host in ("example.invalid", "example.com", "www.example.org", "xen2kvm.example", "host.test", "localhost"):
        assert PLACEHOLDER_HOST_RE.match(host), host
    for host in ("github.com", "docs.ansible.com", "xenhost", "archive.debian.org"):
        assert not PLACEHOLDER_HOST_RE.match(host), host


# Local state and developer tooling that must never reach the artifact, planted in a copy of the
# collection before it is built.
LOCAL_STATE = (".venv/bin/python", "build/demo/images/x.raw", "tests/output/junit.xml", ".pytest_cache/v/x",
               ".hypothesis/examples/x", "plugins/modules/__pycache__/xva_info.cpython-311.pyc",
               "plugins/module_utils/_xva/__pycache__/reader.cpython-311.pyc", "bench/out/result.json",
               ".mypy_cache/x", ".ruff_cache/x", f"{NAMESPACE}-{NAME}-0.0.1.tar.gz")
DEVELOPER_TOOLING = ("Makefile", "scripts/install-deps.sh", "scripts/sanity.sh", "requirements-dev.txt",
                     ".ci/run", ".ansible-lint", "pytest.ini", "bench/xva_bench.py", "playbooks/demo.yml",
                     ".gitignore", "extensions/molecule/config.yml")
EXCLUDED_DIRS = (".venv", "build", "tests/output", ".pytest_cache", ".hypothesis", ".mypy_cache", ".ruff_cache",
                 "bench", "scripts", ".ci")
SHIPPED = ("COPYING", "README.md", "CHANGELOG.md", "meta/runtime.yml", "meta/execution-environment.yml",
           "requirements.txt", "bindep.txt", "changelogs/changelog.yaml", "changelogs/config.yaml",
           "plugins/doc_fragments/xva_source.py", "roles/convert/meta/argument_specs.yml", "playbooks/migrate.yml",
           "plugins/action/xva_convert.py")


def _copy_of_the_checkout(dest):
    """Every file git knows about (tracked, or new and not ignored), as a checkout has them."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest / rel).write_bytes(src.read_bytes())
    return dest


def test_collection_builds_without_local_state_or_developer_tooling(tmp_path):
    """ansible-galaxy's own validation of galaxy.yml; the artifact holds what an installed
    collection uses, not caches, build output or the tools of a checkout."""
    galaxy_cli = Path(sys.executable).with_name("ansible-galaxy")
    if not galaxy_cli.exists():
        pytest.skip("ansible-galaxy is not installed next to this python")
    if subprocess.run(["git", "-C", str(REPO), "rev-parse"], capture_output=True, check=False).returncode:
        pytest.skip("not a git checkout")
    source = _copy_of_the_checkout(tmp_path / "src")
    for rel in LOCAL_STATE + DEVELOPER_TOOLING:
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        if not (source / rel).exists():
            (source / rel).write_text("planted by the test\n")
    proc = subprocess.run(
        [str(galaxy_cli), "collection", "build", "--output-path", str(tmp_path / "out"), str(source)],
        capture_output=True, text=True, check=False, env=dict(os.environ, ANSIBLE_NOCOLOR="1"),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (artifact,) = (tmp_path / "out").glob(f"{NAMESPACE}-{NAME}-*.tar.gz")
    with tarfile.open(artifact) as tar:
        names = set(tar.getnames())
        manifest = json.load(tar.extractfile("MANIFEST.json"))
    leaked = sorted(n for n in names if n in LOCAL_STATE + DEVELOPER_TOOLING or "__pycache__" in n
                    or n.endswith(".pyc") or any(n == d or n.startswith(d + "/") for d in EXCLUDED_DIRS))
    assert not leaked, f"not for the collection artifact: {leaked[:20]}"
    missing = [rel for rel in SHIPPED + tuple(f"plugins/modules/{m.name}" for m in MODULES) if rel not in names]
    assert not missing, f"missing from the artifact: {missing}"
    assert manifest["collection_info"]["license_file"] == "COPYING"


# ------------------------------------------------------------------------------- runtime.yml

def test_runtime_requires_ansible(runtime):
    spec = runtime.get("requires_ansible")
    assert spec, "meta/runtime.yml must set requires_ansible"
    installed = Version(ansible.release.__version__)
    assert installed in SpecifierSet(spec), f"ansible-core {installed} does not satisfy requires_ansible {spec!r}"


def test_runtime_routing_targets_exist(runtime):
    routing = runtime.get("plugin_routing") or {}
    for plugin_type, entries in routing.items():
        for name, entry in (entries or {}).items():
            redirect = (entry or {}).get("redirect", "")
            if redirect.startswith(FQCN + "."):
                target = redirect[len(FQCN) + 1:]
                path = REPO / "plugins" / plugin_type / (target.replace(".", "/") + ".py")
                assert path.is_file(), f"plugin_routing.{plugin_type}.{name} redirects to missing {redirect}"
    for group, members in (runtime.get("action_groups") or {}).items():
        for member in members or []:
            if isinstance(member, str):
                short = member[len(FQCN) + 1:] if member.startswith(FQCN + ".") else member
                assert (REPO / "plugins" / "modules" / f"{short}.py").is_file(), f"action_groups.{group}: no module {member}"


# ----------------------------------------------------------------------------------- modules

def _doc_strings(path):
    """Top-level string assignments DOCUMENTATION/EXAMPLES/RETURN, without importing the module."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name in DOC_VARS:
                assert isinstance(node.value, ast.Constant) and isinstance(node.value.value, str), \
                    f"{path.name}: {name} must be a plain string literal"
                found[name] = node.value.value
    return tree, found


def _parse(path, var, text):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        pytest.fail(f"{path.name}: {var} is not valid YAML (quote strings containing ': ' or ' #'):\n{exc}")


@pytest.mark.parametrize("path", MODULES, ids=[p.stem for p in MODULES])
def test_module_documentation(path):
    _tree, docs = _doc_strings(path)
    missing = [v for v in DOC_VARS if v not in docs]
    assert not missing, f"{path.name} lacks {', '.join(missing)}"

    doc = _parse(path, "DOCUMENTATION", docs["DOCUMENTATION"])
    assert isinstance(doc, dict), f"{path.name}: DOCUMENTATION must be a YAML mapping"
    assert doc.get("module") == path.stem, f"{path.name}: DOCUMENTATION.module is {doc.get('module')!r}"
    for key in ("short_description", "description", "author"):
        assert doc.get(key), f"{path.name}: DOCUMENTATION.{key} is missing"
    for opt, spec in (doc.get("options") or {}).items():
        assert isinstance(spec, dict) and spec.get("description"), f"{path.name}: option {opt} has no description"
    for frag in doc.get("extends_documentation_fragment") or []:
        if frag.startswith(FQCN + "."):
            fragment_file = frag[len(FQCN) + 1:].split(".")[0] + ".py"
            assert (REPO / "plugins" / "doc_fragments" / fragment_file).is_file(), f"{path.name}: no doc fragment {frag}"

    examples = _parse(path, "EXAMPLES", docs["EXAMPLES"])
    assert isinstance(examples, list) and examples, f"{path.name}: EXAMPLES must be a non-empty list of tasks"
    assert f"{FQCN}.{path.stem}" in docs["EXAMPLES"], f"{path.name}: EXAMPLES should call {FQCN}.{path.stem} by FQCN"

    returns = _parse(path, "RETURN", docs["RETURN"])
    assert returns is None or isinstance(returns, dict), f"{path.name}: RETURN must be a YAML mapping"
    for key, spec in (returns or {}).items():
        missing = [k for k in ("description", "returned", "type") if not (isinstance(spec, dict) and spec.get(k))]
        assert not missing, f"{path.name}: RETURN.{key} needs {', '.join(missing)}"


@pytest.mark.parametrize("path", MODULES, ids=[p.stem for p in MODULES])
def test_module_file_conventions(path):
    text = path.read_text(encoding="utf-8")
    assert text.startswith("#!/usr/bin/python\n"), f"{path.name}: first line must be #!/usr/bin/python"
    assert not path.stat().st_mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH), f"{path.name} must not be executable"
    tree, _docs = _doc_strings(path)
    guarded = any(
        isinstance(node, ast.If) and "__name__" in ast.unparse(node.test) and "__main__" in ast.unparse(node.test)
        for node in tree.body
    )
    assert guarded, f"{path.name}: call main() under if __name__ == '__main__':"


def _module_options(path):
    """A module's documented options, those of its collection doc fragments included."""
    _tree, docs = _doc_strings(path)
    doc = yaml.safe_load(docs["DOCUMENTATION"])
    options = dict(doc.get("options") or {})
    for frag in doc.get("extends_documentation_fragment") or []:
        if frag.startswith(FQCN + "."):
            name, _dot, variable = frag[len(FQCN) + 1:].partition(".")  # xapi.vm: the VM attribute of xapi.py
            fragment = REPO / "plugins" / "doc_fragments" / (name + ".py")
            for node in ast.walk(ast.parse(fragment.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == (variable.upper() or "DOCUMENTATION"):
                    options.update(yaml.safe_load(node.value.value).get("options") or {})
    return options


@pytest.mark.parametrize("path", MODULES, ids=[p.stem for p in MODULES])
def test_module_documents_its_requirements(path):
    _tree, docs = _doc_strings(path)
    requirements = yaml.safe_load(docs["DOCUMENTATION"]).get("requirements")
    assert isinstance(requirements, list) and requirements, f"{path.name}: DOCUMENTATION.requirements is missing"
    assert all(isinstance(r, str) and r.strip() for r in requirements), f"{path.name}: requirements are strings"
    assert any(r.startswith("Python 3.11") for r in requirements), f"{path.name}: name the tested Python"
    text = path.read_text(encoding="utf-8")
    if "_libvirt." in text:
        assert any("libvirt-python" in r for r in requirements), f"{path.name}: uses libvirt, say so in requirements"


# ------------------------------------------------------------------------------------- roles

@pytest.mark.parametrize("role", ROLES, ids=[p.name for p in ROLES])
def test_role_argument_specs(role):
    candidates = [role / "meta" / "argument_specs.yml", role / "meta" / "argument_specs.yaml"]
    spec_file = next((c for c in candidates if c.is_file()), None)
    assert spec_file, f"role {role.name} has no meta/argument_specs.yml"
    specs = (_load_yaml(spec_file) or {}).get("argument_specs")
    assert isinstance(specs, dict) and "main" in specs, f"{spec_file}: argument_specs.main is missing"
    for entry_point, spec in specs.items():
        assert (role / "tasks" / f"{entry_point}.yml").is_file() or (role / "tasks" / f"{entry_point}.yaml").is_file(), \
            f"role {role.name}: entry point {entry_point} has no tasks/{entry_point}.yml"
        assert spec.get("short_description"), f"{spec_file}: {entry_point}.short_description is missing"
        for opt, opt_spec in (spec.get("options") or {}).items():
            assert isinstance(opt_spec, dict) and opt_spec.get("description"), \
                f"{spec_file}: {entry_point}.options.{opt} needs a description"


# Module options a role sets itself or leaves to the module, and why.
NOT_EXPOSED = {
    "kvm_domain": {"state": "the role defines the domain; kvm_boot_check starts it",
                   "remove_disks": "only with state=absent",
                   "migrated_at": "recorded by the module at the first run"},
    "xen_vm_export": {"name": "the role exports the VM by the uuid xen_vm_info found (a name may be ambiguous)"},
    "xen_vm_mark": {"name": "the role marks the VM by the uuid xen_vm_info found (a name may be ambiguous)"},
    "xen_vm_power": {"name": "the role starts the VM by the uuid xen_vm_info found (a name may be ambiguous)",
                     "shutdown_timeout": "the role only starts the VM again (rollback), it never stops it"},
    "kvm_boot_check": {"name": "the domain the role just defined",
                       "start": "starting the VM is the point of the boot check",
                       "console_log": "the serial log of the domain the role defined",
                       "poll_interval": "a test knob"},
}


def _role_spec(role):
    """The options of every entry point of the role (main, and e.g. xen_source's export, release...)."""
    options = {}
    for spec in _load_yaml(role / "meta" / "argument_specs.yml")["argument_specs"].values():
        for name, opt in (spec.get("options") or {}).items():
            options.setdefault(name, opt)
    return options


def _role_defaults(role):
    path = role / "defaults" / "main.yml"
    return (_load_yaml(path) or {}) if path.is_file() else {}


def _role_tasks(role):
    """Every task of the role's task files (each entry point's and those they include), blocks opened."""
    tasks = []
    for path in sorted((role / "tasks").glob("*.yml")):
        tasks.extend(_opened_blocks(_load_yaml(path) or []))
    return tasks


def _opened_blocks(tasks):
    for task in tasks:
        yield task
        for key in ("block", "rescue", "always"):
            yield from _opened_blocks(task.get(key) or [])


class _AnyName(dict):
    """Jinja's filter and test tables with every name known (Ansible adds its own at run time)."""

    def __contains__(self, name):
        return True

    def get(self, name, default=None):
        return super().get(name) or (lambda *args, **kwargs: None)


def _module_tasks(role):
    """(module name, its arguments) of each task of the role that calls one of the collection's modules."""
    for task in _role_tasks(role):
        for key, args in task.items():
            if key.startswith(FQCN + ".") and (REPO / "plugins" / "modules" / f"{key[len(FQCN) + 1:]}.py").is_file():
                yield key[len(FQCN) + 1:], args


def _jinja_variables(value):
    """Names a templated value reads (jinja2's own parser, not a regex)."""
    import jinja2
    from jinja2 import meta
    found = set()
    if isinstance(value, str) and "{{" in value:
        env = jinja2.Environment()
        env.filters, env.tests = _AnyName(env.filters), _AnyName(env.tests)
        found |= meta.find_undeclared_variables(env.parse(value))
    elif isinstance(value, dict):
        for item in value.values():
            found |= _jinja_variables(item)
    elif isinstance(value, list):
        for item in value:
            found |= _jinja_variables(item)
    return found


@pytest.mark.parametrize("role", ROLES, ids=[p.name for p in ROLES])
def test_role_required_inputs_are_really_required(role):
    """A required option has no default anywhere, and no option defaults to an empty string that
    would pass validation and fail later in the module."""
    spec, defaults = _role_spec(role), _role_defaults(role)
    for name, opt in spec.items():
        assert name.startswith(role.name + "_"), f"{role.name}: option {name} lacks the role prefix"
        if opt.get("required"):
            assert "default" not in opt, f"{role.name}: required {name} has a default in argument_specs.yml"
            assert name not in defaults, f"{role.name}: required {name} has a default in defaults/main.yml"
        assert opt.get("default", None) != "" and defaults.get(name, None) != "", \
            f"{role.name}: {name} defaults to an empty string; leave it unset and use default(omit)"


@pytest.mark.parametrize("role", ROLES, ids=[p.name for p in ROLES])
def test_role_defaults_match_the_spec_and_read_no_other_role(role):
    spec, defaults = _role_spec(role), _role_defaults(role)
    assert set(defaults) == {n for n, o in spec.items() if "default" in o}, \
        f"{role.name}: defaults/main.yml and the spec's defaults list different options"
    for name, value in defaults.items():
        assert value == spec[name]["default"], f"{role.name}: {name} is {value!r} in defaults, {spec[name]['default']!r} in the spec"
        assert not _jinja_variables(value), f"{role.name}: default {name} reads {sorted(_jinja_variables(value))}"


# Ansible's own variables a role may read besides its options.
ANSIBLE_MAGIC = {"omit", "ansible_playbook_python"}


@pytest.mark.parametrize("role", ROLES, ids=[p.name for p in ROLES])
def test_role_tasks_read_only_their_own_options(role):
    spec = _role_spec(role)
    tasks = _role_tasks(role)
    registered = {t["register"] for t in tasks if "register" in t}
    registered |= {name for t in tasks for name in (t.get("vars") or {})}  # a task's own vars
    read = set()
    for task in tasks:
        read |= _jinja_variables({k: v for k, v in task.items() if k != "name"})
        read |= _jinja_variables(["{{ %s }}" % w for w in (task.get("when") if isinstance(task.get("when"), list)
                                                           else [task["when"]] if "when" in task else [])])
    foreign = sorted(read - set(spec) - registered - ANSIBLE_MAGIC)
    assert not foreign, f"{role.name}: tasks read variables that are not its options: {foreign}"
    unused = sorted(set(spec) - read)
    assert not unused, f"{role.name}: options never passed on: {unused}"


@pytest.mark.parametrize("role", ROLES, ids=[p.name for p in ROLES])
def test_role_exposes_the_module_options(role):
    calls = {}  # a module a role calls in several tasks (one per state) exposes what any of them pass
    for module, args in _module_tasks(role):
        calls.setdefault(module, set()).update(args)
    for module, passed in calls.items():
        options = set(_module_options(REPO / "plugins" / "modules" / f"{module}.py"))
        left_out = options - passed - set(NOT_EXPOSED.get(module, {}))
        assert not left_out, f"role {role.name} does not expose {module} options {sorted(left_out)}"
        assert not passed - options, f"role {role.name} passes unknown {module} options {sorted(passed - options)}"


# Role defaults that differ from the module's on purpose, and why.
DIFFERENT_DEFAULTS = {
    "kvm_import_boot_timeout": "a migrated guest's first boot also runs its one-shot first-boot job",
}


@pytest.mark.parametrize("role", ROLES, ids=[p.name for p in ROLES])
def test_role_defaults_follow_the_module_defaults(role):
    """A role option handed straight to a module option has the module's default (or none and is
    omitted when unset), so the role and the module never drift apart silently."""
    spec = _role_spec(role)
    for module, args in _module_tasks(role):
        options = _module_options(REPO / "plugins" / "modules" / f"{module}.py")
        for option, value in args.items():
            plain = re.fullmatch(r"\{\{ (%s_\w+) \}\}" % role.name, str(value))
            omitted = re.fullmatch(r"\{\{ (%s_\w+) \| default\(omit\) \}\}" % role.name, str(value))
            if omitted:
                assert "default" not in spec[omitted.group(1)], f"{role.name}: {omitted.group(1)} has a default and default(omit)"
            if plain and "default" in options.get(option, {}) and plain.group(1) not in DIFFERENT_DEFAULTS \
                    and not spec[plain.group(1)].get("required"):
                assert spec[plain.group(1)].get("default") == options[option]["default"], \
                    f"{role.name}: {plain.group(1)} defaults to {spec[plain.group(1)].get('default')!r}, " \
                    f"{module}'s {option} to {options[option]['default']!r}"


def test_role_secrets_are_no_log():
    for role in ROLES:
        for name, opt in _role_spec(role).items():
            if re.search(r"pass|secret|token|session_id", name):
                assert opt.get("no_log") is True, f"{role.name}: {name} needs no_log: true"


# ------------------------------------------------------------------- execution environment

def _venv_tool(name):
    tool = Path(sys.executable).with_name(name)
    if not tool.exists():
        pytest.skip(f"{name} is not installed next to this python (requirements-dev.txt)")
    return str(tool)


def test_execution_environment_metadata_is_introspected(tmp_path):
    """ansible-builder finds the collection's Python and system requirements through
    meta/execution-environment.yml, as it does inside an image build."""
    ee_meta = _load_yaml(REPO / "meta" / "execution-environment.yml")
    assert ee_meta["dependencies"] == {"python": "requirements.txt", "system": "bindep.txt"}
    collections = tmp_path / "collections" / "ansible_collections" / NAMESPACE
    collections.mkdir(parents=True)
    (collections / NAME).symlink_to(REPO)
    proc = subprocess.run([_venv_tool("ansible-builder"), "introspect", str(tmp_path / "collections"),
                           "--write-pip", str(tmp_path / "pip.txt"), "--write-bindep", str(tmp_path / "bindep.txt")],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pip = (tmp_path / "pip.txt").read_text()
    for library in ("libvirt-python", "xxhash", "zstandard"):
        assert re.search(r"^%s\b.*from collection %s" % (library, FQCN), pip, re.M), pip
    assert re.search(r"^qemu-utils \[platform:dpkg\]", (tmp_path / "bindep.txt").read_text(), re.M)


def test_execution_environment_definition_builds_a_context(tmp_path):
    """``ansible-builder create`` accepts an EE definition with this collection and its
    requirements files, and writes them into the build context."""
    definition = {
        "version": 3,
        "images": {"base_image": {"name": "debian:bookworm"}},
        "dependencies": {
            "python_interpreter": {"package_system": "python3", "python_path": "/usr/bin/python3"},
            "ansible_core": {"package_pip": "ansible-core>=2.19,<2.20"},
            "ansible_runner": {"package_pip": "ansible-runner"},
            "galaxy": {"collections": [{"name": FQCN}]},
            "python": str(REPO / "requirements.txt"),
            "system": str(REPO / "bindep.txt"),
        },
    }
    (tmp_path / "ee.yml").write_text(yaml.safe_dump(definition))
    proc = subprocess.run([_venv_tool("ansible-builder"), "create", "-f", str(tmp_path / "ee.yml"),
                           "-c", str(tmp_path / "context")], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    build = tmp_path / "context" / "_build"
    assert (build / "requirements.txt").read_text() == (REPO / "requirements.txt").read_text()
    assert (build / "bindep.txt").read_text() == (REPO / "bindep.txt").read_text()
    assert FQCN in (build / "requirements.yml").read_text()


def test_bindep_file_parses():
    bindep_depends = pytest.importorskip("bindep.depends")
    depends = bindep_depends.Depends((REPO / "bindep.txt").read_text())
    assert depends.active_rules(["platform:dpkg"]), "no rule applies on Debian"


# ------------------------------------------------------------------------------- changelog

def test_changelog_lint():
    """Fragments and changelog.yaml as antsibull-changelog (and ansible-test's changelog test) read them."""
    tool = _venv_tool("antsibull-changelog")
    for argv in ([tool, "lint"], [tool, "lint-changelog-yaml", "changelogs/changelog.yaml"]):
        proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=False)
        assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def test_changelog_fragments_are_rst_not_ansible_markup():
    """Fragments are reStructuredText: C(x) would appear as "C(x)" in CHANGELOG.md; write ``x``."""
    markup = re.compile(r"\b(?:C|O|V|RV|M|I|U|L)\([^)]*\)")
    found = []
    for fragment in sorted((REPO / "changelogs" / "fragments").glob("*.y*ml")):
        found += [f"{fragment.name}: {m.group(0)}" for m in markup.finditer(fragment.read_text(encoding="utf-8"))]
    assert not found, f"Ansible markup in changelog fragments (use ``literal``): {found[:10]}"


# --------------------------------------------------------------------------- README and docs

def _sections(markdown):
    """{heading: body} of the level-2 sections."""
    parts = re.split(r"^## (.+)$", markdown, flags=re.M)
    return {title.strip(): body for title, body in zip(parts[1::2], parts[2::2])}


def _make_targets():
    return set(re.findall(r"^([a-z][a-z0-9_-]*):", (REPO / "Makefile").read_text(encoding="utf-8"), re.M))


def test_readme_sections_and_the_two_set_up_commands():
    sections = _sections((REPO / "README.md").read_text(encoding="utf-8"))
    for title in ("Set up", "Installing", "Supported", "What is refused and why", "License"):
        assert sections.get(title, "").strip(), f"README.md has no section {title!r}"
    (block,) = re.findall(r"```sh\n(.*?)```", sections["Set up"], re.S)
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]
    assert commands == ["make demo", "make test"]


def test_readme_supported_names_the_tested_versions(runtime):
    supported = _sections((REPO / "README.md").read_text(encoding="utf-8"))["Supported"]
    pinned = re.search(r"^ansible-core>=(\d+\.\d+)", (REPO / "requirements-dev.txt").read_text(), re.M).group(1)
    assert f"ansible-core {pinned}" in supported, f"README Supported should name ansible-core {pinned}"
    assert runtime["requires_ansible"] == f">={pinned}.0", "requires_ansible should be the tested ansible-core"
    assert f"Python {sys.version_info.major}.{sys.version_info.minor}" in supported
    for product in ("XenServer", "XCP-ng", "Debian 12"):
        assert product in supported


class _VaultLoader(yaml.SafeLoader):
    """YAML as Ansible reads it: an inline ``!vault`` value is a string (still encrypted)."""


_VaultLoader.add_constructor("!vault", lambda loader, node: loader.construct_scalar(node))


def _readme_yaml_blocks():
    return [yaml.load(block, Loader=_VaultLoader) for block in  # noqa: S506 (a SafeLoader)
            re.findall(r"```yaml\n(.*?)```", (REPO / "README.md").read_text(encoding="utf-8"), re.S)]


def test_readme_role_example_uses_only_role_options():
    examples = [block for block in _readme_yaml_blocks() if isinstance(block, list) and "roles" in block[0]]
    assert examples, "README.md has no playbook example with roles"
    for entry in (entry for example in examples for entry in example[0]["roles"]):
        role = REPO / "roles" / entry["role"].split(".")[-1]
        spec = _role_spec(role)
        assert set(entry.get("vars") or {}) <= set(spec), f"README example: unknown {role.name} variables"
        required = {n for n, o in spec.items() if o.get("required")}
        assert required <= set(entry.get("vars") or {}), f"README example: {role.name} lacks {required}"


@pytest.mark.parametrize("doc", ["README.md", "docs/developing.md"])
def test_docs_name_existing_make_targets_and_paths(doc):
    text = (REPO / doc).read_text(encoding="utf-8")
    targets = _make_targets()
    unknown = sorted({t for t in re.findall(r"`make ([a-z][a-z0-9_-]*)", text) if t not in targets})
    assert not unknown, f"{doc} names make targets the Makefile lacks: {unknown}"
    top = ("scripts/", "tests/", "plugins/", "roles/", "meta/", "changelogs/", "docs/", "playbooks/", "bench/",
           "extensions/", ".ci/")
    missing = sorted({p for p in re.findall(r"`([^`\s]+)`", text) if p.startswith(top) and not re.search(r"[<>*A-Z]", p)
                      and not any((base / p.rstrip("/")).exists() for base in [REPO] + ROLES)})
    assert not missing, f"{doc} names paths that do not exist: {missing}"


def test_readme_inventory_example_uses_only_documented_variables():
    """Every variable the README's site inventory sets on a KVM host or a VM is one docs/migrate.md describes."""
    inventories = [block for block in _readme_yaml_blocks() if isinstance(block, dict) and "all" in block]
    assert inventories, "README.md has no site inventory example"
    documented = set(re.findall(r"`([a-z_]+)`", (REPO / "docs" / "migrate.md").read_text(encoding="utf-8")))
    for inventory in inventories:  # the XVA site, the live pool
        groups = inventory["all"]["children"]
        assert {"kvm_hosts", "xen_vms"} <= set(groups) <= {"kvm_hosts", "xen_vms", "xen_hosts"}, set(groups)
        names = set(groups["xen_vms"].get("vars") or {})
        for group in groups.values():
            for host_vars in group["hosts"].values():
                names |= set(host_vars or {})
        undocumented = {name for name in names if not name.startswith("ansible_")} - documented
        assert not undocumented, f"README inventory variables missing from docs/migrate.md: {sorted(undocumented)}"
